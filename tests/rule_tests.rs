//! `earlywarn test`: a deliberately wrong expectation fails with a message a rule writer can act on.

mod support;

use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn wrong_expectations_fail_readably_and_exit_1() {
    let config = root().join("config.example.toml");
    let file = root().join("tests/rule_tests/wrong.test.toml");
    let out = support::earlywarn(&[
        "test",
        "--config",
        config.to_str().unwrap(),
        file.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    for needle in [
        "  ok    right: a nitazene in Bolton goes to the panel for review",
        "  FAIL  wrong district and recipients",
        "expected an alert from `nitazene-detected` for district = \"Wigan\" to lead-bolton",
        "but rule `nitazene-detected` raised:",
        "(its district is \"Bolton\", not \"Wigan\")",
        "(it goes to dews-panel, not lead-bolton)",
        "  FAIL  wrong: expects silence from a sample with xylazine",
        "expected no alerts, but got:",
        "`xylazine-detected` for district = \"Salford\"",
        "1 passed, 2 failed",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
}

#[test]
fn run_selects_tests_by_name() {
    let config = root().join("config.example.toml");
    let file = root().join("tests/rule_tests/wrong.test.toml");
    let out = support::earlywarn(&[
        "test",
        "--config",
        config.to_str().unwrap(),
        "--run",
        "right:",
        file.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("1 passed, 0 failed"), "{stdout}");
}

#[test]
fn the_shipped_rule_library_passes_its_tests() {
    let config = root().join("config.example.toml");
    let mut args = vec![
        "test".to_string(),
        "--config".into(),
        config.to_string_lossy().into_owned(),
    ];
    let mut files: Vec<String> = std::fs::read_dir(root().join("rules/tests"))
        .unwrap()
        .map(|e| e.unwrap().path().to_string_lossy().into_owned())
        .filter(|p| p.ends_with(".test.toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    args.extend(files);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = support::earlywarn(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}

#[test]
fn a_typo_in_a_test_row_is_an_error_not_a_silent_pass() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("typo.test.toml");
    std::fs::write(
        &file,
        format!(
            "rules = [\"{}/rules/*.toml\"]\n[[test]]\nname = \"typo\"\nexpect_none = true\n[[test.input]]\nfeed = \"drug_testing\"\nrows = [{{ sample_id = \"S1\", tested_at = \"2025-11-04T11:30:00Z\", substance_major = \"heroin\" }}]\n",
            root().display()
        ),
    )
    .unwrap();
    let config = root().join("config.example.toml");
    let out = support::earlywarn(&[
        "test",
        "--config",
        config.to_str().unwrap(),
        file.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("typo.test.toml:6:8: input 1 row 1: feed `drug_testing` has no field `substance_major`; did you mean `substances_major`?"), "{stderr}");
}
