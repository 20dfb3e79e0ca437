//! The files the Debian package generates from the real binary: man pages and
//! shell completions (`earlywarn generate-docs DIR`, run by `scripts/package`).
//! The package itself (lintian, the installed config, install/upgrade/purge) is
//! checked by `scripts/package`.

use std::path::Path;
use std::process::Command;

fn earlywarn(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_earlywarn"))
        .args(args)
        .output()
        .expect("run earlywarn")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[test]
fn generate_docs_writes_a_man_page_per_command_and_three_completions() {
    let dir = tempfile::tempdir().unwrap();
    let out = earlywarn(&["generate-docs", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");

    let man = dir.path().join("man");
    let main_page = read(&man.join("earlywarn.1"));
    assert!(
        main_page.starts_with(".ie") || main_page.contains(".TH earlywarn"),
        "{main_page}"
    );
    assert!(
        main_page.contains("\\-\\-config"),
        "the global --config option is documented"
    );
    for sub in [
        "run",
        "check",
        "test",
        "replay",
        "status",
        "alerts",
        "send-test-email",
    ] {
        let page = read(&man.join(format!("earlywarn-{sub}.1")));
        assert!(page.contains(".TH"), "earlywarn-{sub}.1 is a man page");
    }
    assert!(read(&man.join("earlywarn-alerts-approve.1")).contains("\\-\\-by"));

    let completions = dir.path().join("completions");
    let bash = read(&completions.join("earlywarn.bash"));
    let zsh = read(&completions.join("_earlywarn"));
    let fish = read(&completions.join("earlywarn.fish"));
    for (shell, script) in [("bash", &bash), ("zsh", &zsh), ("fish", &fish)] {
        assert!(
            script.contains("send-test-email"),
            "{shell} completes the subcommands"
        );
        assert!(
            script.contains("log-format"),
            "{shell} completes the options"
        );
    }
    assert!(zsh.starts_with("#compdef earlywarn"), "{zsh}");
}

#[test]
fn generate_docs_is_hidden_from_help_man_pages_and_completions() {
    let help = earlywarn(&["--help"]);
    assert!(help.status.success());
    assert!(!String::from_utf8_lossy(&help.stdout).contains("generate-docs"));

    let dir = tempfile::tempdir().unwrap();
    assert!(
        earlywarn(&["generate-docs", dir.path().to_str().unwrap()])
            .status
            .success()
    );
    for entry in walk(dir.path()) {
        assert!(
            !read(&entry).contains("generate-docs") && !read(&entry).contains("generate\\-docs"),
            "{} mentions the hidden subcommand",
            entry.display()
        );
    }
    assert!(!dir.path().join("man/earlywarn-generate-docs.1").exists());
}

#[test]
fn generate_docs_without_a_folder_is_a_usage_error_and_other_commands_still_parse() {
    let out = earlywarn(&["generate-docs"]);
    assert_eq!(out.status.code(), Some(2), "clap's usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("<dir>"));

    let unknown = earlywarn(&["no-such-command"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unrecognized subcommand"));

    let missing = tempfile::tempdir().unwrap();
    let config = missing.path().join("absent.toml");
    let check = earlywarn(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(
        check.status.code(),
        Some(1),
        "check still runs: a user error for a missing config"
    );
}

#[test]
fn generate_docs_into_an_unwritable_place_fails_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a folder").unwrap();
    let out = earlywarn(&["generate-docs", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot write the docs"));
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
