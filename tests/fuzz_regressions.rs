//! Fuzz findings as tests: every input the fuzzers (`fuzz/`, `scripts/fuzz`) ever crashed on
//! goes through the same code as the fuzz target, here, on every `cargo test`.
//!
//! * `fuzz/regressions/TARGET/*`: crashes that were fixed; they must keep passing.
//! * `fuzz/known-crashes/TARGET/*`: crashes not fixed yet; each has an ignored test below
//!   naming the bug. When it is fixed: `git mv` the input to `fuzz/regressions/TARGET/` and
//!   delete its test here.
//!
//! The fuzz targets' own code (`fuzz/src/lib.rs`) is compiled into this test, so a change of
//! the library's API that breaks the fuzz targets also breaks `cargo test` here, and the
//! seed corpus is checked to pass through it.

#[allow(dead_code)]
#[path = "../fuzz/src/lib.rs"]
mod fuzz;

use std::fs;
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs one input through the code of fuzz target `target`, including the checks the fuzz
/// targets leave out by default because they hit known, unfixed bugs.
fn run(target: &str, data: &[u8]) {
    match target {
        "parse_csv" => drop(fuzz::parse_file_with("csv", data, true)),
        "parse_jsonl" => drop(fuzz::parse_file_with("jsonl", data, true)),
        "parse_json" => drop(fuzz::parse_file_with("json", data, true)),
        "condition" => fuzz::check_condition(&String::from_utf8_lossy(data)),
        "rule_file" => fuzz::check_rule_files_with(&String::from_utf8_lossy(data), true),
        other => panic!("no fuzz target {other}"),
    }
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    out.retain(|p| p.is_file());
    out.sort();
    out
}

const TARGETS: [&str; 5] = [
    "parse_csv",
    "parse_jsonl",
    "parse_json",
    "condition",
    "rule_file",
];

/// Replays one saved input, saying which file failed.
fn replay(target: &str, path: &Path) {
    let data = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let outcome = std::panic::catch_unwind(|| run(target, &data));
    if let Err(panic) = outcome {
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        panic!(
            "fuzz target {target} crashes on {}: {msg}\nreproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz {target} {}",
            path.display(),
            path.display()
        );
    }
}

#[test]
fn fixed_fuzz_crashes_stay_fixed() {
    for target in TARGETS {
        for path in files_in(&root().join("fuzz/regressions").join(target)) {
            replay(target, &path);
        }
    }
}

/// The seeds `fuzz/seeds.py` starts the fuzzers from pass, as the fuzz targets run them
/// (known bugs left out): the feed files of `examples/` and `tests/corpus/` in every feed
/// variant, the shipped rules (alone and as one set), and their conditions.
#[test]
fn the_seed_corpus_passes_through_the_fuzz_targets() {
    let mut parsed = 0;
    for dir in ["examples", "tests/corpus/drug_testing"] {
        for path in files_in(&root().join(dir)) {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let format = match name.rsplit('.').next() {
                Some("csv") | Some("txt") => "csv",
                Some("jsonl") => "jsonl",
                Some("json") => "json",
                _ => continue,
            };
            let bytes = fs::read(&path).unwrap();
            for variant in 0..4u8 {
                let mut data = vec![variant];
                data.extend_from_slice(&bytes);
                let summary = fuzz::parse_file_with(format, &data, false);
                if variant == 0 && name.starts_with("drug-testing") {
                    assert!(
                        summary.file_error.is_none(),
                        "{name}: {:?}",
                        summary.file_error
                    );
                    assert!(summary.errors.is_empty(), "{name}: {:?}", summary.errors);
                    assert!(!summary.events.is_empty(), "{name}");
                }
                parsed += 1;
            }
        }
    }
    assert!(parsed > 40, "{parsed} seed files");

    let rules: Vec<String> = files_in(&root().join("rules"))
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| fs::read_to_string(p).unwrap())
        .collect();
    assert!(rules.len() >= 3);
    // The shipped set as one (lists live in their own file), through the engine.
    fuzz::check_rule_files_with(&rules.join("\n#---\n"), false);
    for text in &rules {
        fuzz::check_rule_files_with(text, false);
        for line in text.lines() {
            if let Some(when) = line.trim().strip_prefix("when = '")
                && let Some(when) = when.strip_suffix('\'')
            {
                fuzz::check_condition(when);
            }
        }
    }
    for path in files_in(&root().join("tests/check_errors")) {
        if path.extension().is_some_and(|e| e == "toml") {
            fuzz::check_rule_files_with(&fs::read_to_string(&path).unwrap(), false);
        }
    }
}

fn known(target: &str, name: &str) {
    replay(
        target,
        &root().join("fuzz/known-crashes").join(target).join(name),
    );
}

/// `src/rules/engine.rs` (`observe_match`, rate): `*within + *baseline` panics
/// ("overflow when adding durations") when the two add up past u64::MAX seconds. `check`
/// accepts the rule; the daemon exits (101) on the first matching record, and again on every
/// restart while the file waits in the folder.
#[test]
fn rate_within_plus_baseline_overflow() {
    known("rule_file", "rate-within-plus-baseline-overflow.toml");
}

/// `src/rules/engine.rs` (`tick`): `within * 2` for early closes panics ("overflow when
/// multiplying duration by scalar") for a deadline `within` over u64::MAX / 2 seconds, as soon
/// as a closing record arrived before its opening one. The early close is stored, so the
/// daemon then panics at every start (the first tick).
#[test]
fn deadline_early_close_within_times_two_overflow() {
    known(
        "rule_file",
        "deadline-early-close-within-times-two-overflow.toml",
    );
}

/// `src/rules/engine.rs` (`observe_match`, threshold/rate windows):
/// `latest - span.as_millis() as i64` truncates a window over ~292 million years to a
/// negative i64 and the subtraction overflows: a panic with debug assertions, a wrong prune
/// bound in release.
#[test]
fn threshold_window_millis_overflow() {
    known("rule_file", "threshold-window-millis-overflow.toml");
}

/// `src/alerts/render.rs`: templates run without a bound. A subject of two nested
/// `range(100000)` loops (10^10 steps) passes `check`, then hangs the file's processing (and
/// `replay`): the daemon stops taking files and, under systemd's watchdog, is restarted onto
/// the same file again. (minijinja's `fuel` would bound it; `render_with_fallback` would then
/// send the default template.)
#[test]
fn template_nested_loops_finish_in_time() {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        known("rule_file", "template-nested-loops-hang.toml");
        let _ = done_tx.send(());
    });
    assert!(
        done_rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .is_ok(),
        "rendering fuzz/known-crashes/rule_file/template-nested-loops-hang.toml took over 20 s"
    );
}
