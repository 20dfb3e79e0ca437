//! `earlywarn users ...` and `earlywarn audit` as an admin meets them (SPEC §2, §9),
//! against the real binary and a real database.
//!
//! Run with `cargo test --test users_cli`.

mod e2e_support;
mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use e2e_support::*;
use support::earlywarn;

const PASSWORD: &str = "correct horse battery";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A config with two partners, `panel` and `police`.
fn setup() -> (tempfile::TempDir, PathBuf) {
    let dir = tempdir();
    let config = Cfg {
        partners: format!(
            "{}\n{}",
            partner("panel", &["panel@example.org"], true, &["*"], None),
            partner("police", &["police@example.org"], false, &["*"], None)
        ),
        ..Cfg::default()
    }
    .write(dir.path());
    (dir, config)
}

/// Runs earlywarn with `stdin` on its standard input.
fn earlywarn_stdin(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_earlywarn"))
        .args(args)
        .env_remove("EARLYWARN_CONFIG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn run(config: &Path, args: &[&str]) -> Output {
    let mut all = vec!["--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    earlywarn(&all)
}

fn run_stdin(config: &Path, args: &[&str], stdin: &str) -> Output {
    let mut all = vec!["--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    earlywarn_stdin(&all, stdin)
}

fn ok(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Exit 1, and stderr.
fn refused(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stderr)
}

fn add_jsmith(config: &Path) {
    let out = run_stdin(
        config,
        &[
            "users",
            "add",
            "JSmith",
            "--role",
            "reviewer",
            "--partner",
            "panel",
            "--display",
            "Dr J Smith",
            "--password-stdin",
        ],
        &format!("{PASSWORD}\nsecond line ignored\n"),
    );
    let said = ok(&out);
    assert!(
        said.contains("added reviewer `jsmith` (Dr J Smith) for partner panel"),
        "{said}"
    );
}

fn list_json(config: &Path) -> Vec<serde_json::Value> {
    let out = ok(&run(config, &["users", "list", "--format", "json"]));
    serde_json::from_str(&out).unwrap()
}

#[test]
fn an_account_added_from_stdin_is_listed_in_text_and_json() {
    let (_dir, config) = setup();
    add_jsmith(&config);
    let listed = list_json(&config);
    assert_eq!(listed.len(), 1);
    let a = &listed[0];
    assert_eq!(a["name"], "jsmith");
    assert_eq!(a["display"], "Dr J Smith");
    assert_eq!(a["role"], "reviewer");
    assert_eq!(a["partner"], "panel");
    assert_eq!(a["disabled"], false);
    // The hash is never shown.
    assert!(a.get("password_hash").is_none());

    let out = ok(&run(&config, &["users", "list"]));
    let line = out.lines().find(|l| l.starts_with("jsmith")).unwrap();
    for word in ["reviewer", "panel", "active", "Dr J Smith"] {
        assert!(line.contains(word), "{word}: {out}");
    }
    assert!(!out.contains(PASSWORD));
}

#[test]
fn a_bad_name_role_partner_password_or_duplicate_is_refused_with_exit_1() {
    let (_dir, config) = setup();
    add_jsmith(&config);
    let add = |name: &str, extra: &[&str], password: &str| {
        let mut args = vec!["users", "add", name, "--role", "viewer", "--password-stdin"];
        args.extend_from_slice(extra);
        run_stdin(&config, &args, &format!("{password}\n"))
    };
    let err = refused(&add("jsmith", &[], PASSWORD));
    assert!(err.contains("already an account `jsmith`"), "{err}");
    // Any case is the same name.
    let err = refused(&add("JSMITH", &[], PASSWORD));
    assert!(err.contains("already an account `jsmith`"), "{err}");

    let err = refused(&add("j smith", &[], PASSWORD));
    assert!(
        err.contains("account name `j smith`") && err.contains("letters a-z"),
        "{err}"
    );
    let err = refused(&add("_x", &[], PASSWORD));
    assert!(err.contains("must start with a letter or a digit"), "{err}");

    let err = refused(&add("anna", &["--partner", "polise"], PASSWORD));
    assert!(
        err.contains("unknown partner `polise`; did you mean `police`?"),
        "{err}"
    );

    let err = refused(&add("anna", &[], "tiny secret"));
    assert!(err.contains("at least 12 characters"), "{err}");
    assert!(
        !err.contains("tiny secret"),
        "the password is echoed: {err}"
    );
    let err = refused(&add("anna", &[], &"x".repeat(1025)));
    assert!(err.contains("at most 1024 bytes"), "{err}");

    let err = refused(&run_stdin(
        &config,
        &[
            "users",
            "add",
            "anna",
            "--role",
            "superuser",
            "--password-stdin",
        ],
        &format!("{PASSWORD}\n"),
    ));
    assert!(
        err.contains("unknown role `superuser`; the roles are viewer, reviewer, admin"),
        "{err}"
    );

    // Without a terminal and without --password-stdin: told how instead.
    let err = refused(&run(&config, &["users", "add", "anna", "--role", "viewer"]));
    assert!(err.contains("--password-stdin"), "{err}");

    // None of the refused ones was added.
    let names: Vec<String> = list_json(&config)
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["jsmith"]);
}

#[test]
fn passwd_disable_and_enable_change_the_account_and_are_audited() {
    let (_dir, config) = setup();
    add_jsmith(&config);
    let out = ok(&run_stdin(
        &config,
        &["users", "passwd", "jsmith", "--password-stdin"],
        "a brand new passphrase\n",
    ));
    assert!(out.contains("set a new password for `jsmith`"), "{out}");
    let err = refused(&run_stdin(
        &config,
        &["users", "passwd", "nobody", "--password-stdin"],
        "a brand new passphrase\n",
    ));
    assert!(err.contains("no account `nobody`"), "{err}");

    ok(&run(&config, &["users", "disable", "JSmith"]));
    assert_eq!(list_json(&config)[0]["disabled"], true);
    let listed = ok(&run(&config, &["users", "list"]));
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("jsmith") && l.contains("disabled")),
        "{listed}"
    );
    ok(&run(&config, &["users", "enable", "jsmith"]));
    assert_eq!(list_json(&config)[0]["disabled"], false);
    let err = refused(&run(&config, &["users", "disable", "nobody"]));
    assert!(err.contains("no account `nobody`"), "{err}");

    // The audit log names each change, with the Unix account that made it.
    let me = format!("unix:{}", earlywarn::review::unix_account());
    let entries: Vec<serde_json::Value> =
        serde_json::from_str(&ok(&run(&config, &["audit", "--format", "json"]))).unwrap();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "account_added",
            "password_changed",
            "account_disabled",
            "account_enabled"
        ]
    );
    for e in &entries {
        assert_eq!(e["actor"], me.as_str(), "{e}");
        assert_eq!(e["source"], me.as_str(), "{e}");
        assert_eq!(e["detail"]["name"], "jsmith", "{e}");
    }
    assert_eq!(entries[0]["detail"]["role"], "reviewer");
    assert_eq!(entries[0]["detail"]["partner"], "panel");
    // No password, old or new, anywhere in the log.
    let all = ok(&run(&config, &["audit", "--format", "json"]));
    assert!(
        !all.contains(PASSWORD) && !all.contains("passphrase"),
        "{all}"
    );

    let shown = ok(&run(&config, &["audit", "--since", "1h"]));
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 4, "{shown}");
    for (line, action) in lines.iter().zip(&actions) {
        assert!(line.contains(&me) && line.contains(action), "{line}");
    }
    let err = refused(&run(&config, &["audit", "--since", "soon"]));
    assert!(
        err.contains("--since") && err.contains("not a duration"),
        "{err}"
    );
}

#[test]
fn audit_since_leaves_out_older_entries() {
    let (dir, config) = setup();
    add_jsmith(&config);
    // An entry from two hours ago, written as the console would have.
    let store = earlywarn::store::Store::open(&dir.path().join("state")).unwrap();
    let two_hours_ago = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(2);
    let actor = earlywarn::audit::Actor::web("jsmith", "Dr J Smith", "192.0.2.7".parse().unwrap());
    store
        .append_audit(
            two_hours_ago,
            &actor,
            earlywarn::audit::Action::Login,
            None,
            &serde_json::json!({}),
        )
        .unwrap();
    drop(store);
    let all = ok(&run(&config, &["audit"]));
    assert!(
        all.contains("web:jsmith") && all.contains("192.0.2.7"),
        "{all}"
    );
    let recent = ok(&run(&config, &["audit", "--since", "1h"]));
    assert!(!recent.contains("web:jsmith"), "{recent}");
    assert!(recent.contains("account_added"), "{recent}");
}

/// Runs `earlywarn ARGS` on a terminal (a pseudo-terminal from util-linux's
/// `script`), typing each of `lines` once the prompt before it has appeared.
/// Returns the exit code and everything the terminal showed.
fn on_a_terminal(config: &Path, args: &[&str], answers: &[(&str, &str)]) -> (i32, String) {
    use std::io::Read;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};
    let mut command = format!(
        "{} --config {}",
        env!("CARGO_BIN_EXE_earlywarn"),
        config.display()
    );
    for a in args {
        command.push_str(&format!(" '{a}'"));
    }
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .env_remove("EARLYWARN_CONFIG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("script (util-linux) runs");
    let shown = Arc::new(Mutex::new(Vec::new()));
    let mut stdout = child.stdout.take().unwrap();
    let reader = {
        let shown = shown.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                shown.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let mut stdin = child.stdin.take().unwrap();
    let mut seen = 0;
    for (prompt, answer) in answers {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let now_shown = text(&shown.lock().unwrap());
            if let Some(at) = now_shown[seen..].find(prompt) {
                seen += at + prompt.len();
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no prompt {prompt:?} in {now_shown:?}"
            );
            std::thread::yield_now();
        }
        stdin.write_all(format!("{answer}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
    }
    let status = child.wait().unwrap();
    drop(stdin);
    reader.join().unwrap();
    let all = text(&shown.lock().unwrap());
    (status.code().unwrap_or(-1), all)
}

/// Echo is not asserted: the test types the moment the prompt shows, which
/// can be before rpassword has turned echo off (a person cannot type that fast).
#[test]
fn without_password_stdin_the_password_is_asked_twice_on_the_terminal() {
    let (dir, config) = setup();
    let (code, shown) = on_a_terminal(
        &config,
        &["users", "add", "anna", "--role", "admin"],
        &[("New password: ", PASSWORD), ("The same again: ", PASSWORD)],
    );
    assert_eq!(code, 0, "{shown}");
    assert!(shown.contains("added admin `anna`"), "{shown}");

    // Two different entries: nothing changes.
    let (code, shown) = on_a_terminal(
        &config,
        &["users", "passwd", "anna"],
        &[
            ("New password: ", "a brand new passphrase"),
            ("The same again: ", "a brand new passphrasf"),
        ],
    );
    assert_eq!(code, 1, "{shown}");
    assert!(
        shown.contains("the two passwords differ; nothing was changed"),
        "{shown}"
    );

    // The account logs in with the password typed, and only with it.
    let store = earlywarn::store::Store::open(&dir.path().join("state")).unwrap();
    let ip = "192.0.2.7".parse().unwrap();
    let policy = earlywarn::accounts::LoginPolicy::default();
    let now = jiff::Timestamp::now();
    earlywarn::accounts::login(&store, "anna", PASSWORD, ip, now, &policy).unwrap();
    assert!(
        earlywarn::accounts::login(&store, "anna", "a brand new passphrase", ip, now, &policy)
            .is_err()
    );
}

#[test]
fn passwd_and_disable_from_the_command_line_end_the_accounts_sessions() {
    use earlywarn::accounts::{LoginError, LoginPolicy, LoginRefused, login, session};
    let (dir, config) = setup();
    add_jsmith(&config);
    let store = earlywarn::store::Store::open(&dir.path().join("state")).unwrap();
    let ip = "192.0.2.7".parse().unwrap();
    let policy = LoginPolicy::default();
    let idle = std::time::Duration::from_secs(1800);
    let now = jiff::Timestamp::now();
    let first = login(&store, "jsmith", PASSWORD, ip, now, &policy).unwrap();
    assert!(session(&store, &first.token, idle, now).unwrap().is_some());

    ok(&run_stdin(
        &config,
        &["users", "passwd", "jsmith", "--password-stdin"],
        "a brand new passphrase\n",
    ));
    assert!(session(&store, &first.token, idle, now).unwrap().is_none());
    let second = login(&store, "jsmith", "a brand new passphrase", ip, now, &policy).unwrap();

    ok(&run(&config, &["users", "disable", "jsmith"]));
    assert!(session(&store, &second.token, idle, now).unwrap().is_none());
    assert!(matches!(
        login(&store, "jsmith", "a brand new passphrase", ip, now, &policy),
        Err(LoginError::Refused(LoginRefused::Disabled))
    ));
    ok(&run(&config, &["users", "enable", "jsmith"]));
    login(&store, "jsmith", "a brand new passphrase", ip, now, &policy).unwrap();
}
