//! Fuzz findings as tests: every input the fuzzers (`fuzz/`, `scripts/fuzz`) ever crashed on
//! goes through the same code as the fuzz target, here, on every `cargo test`.
//!
//! * `fuzz/regressions/TARGET/*`: crashes that were fixed; they must keep passing.
//! * `fuzz/known-crashes/TARGET/*` (none at present): crashes not fixed yet, each with an
//!   `#[ignore = "BUG: ..."]` test here naming the bug. When it is fixed, move the input to
//!   `fuzz/regressions/TARGET/` and delete its test.
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

/// Runs one input through the code of fuzz target `target`.
fn run(target: &str, data: &[u8]) {
    match target {
        "parse_csv" => drop(fuzz::parse_file("csv", data)),
        "parse_jsonl" => drop(fuzz::parse_file("jsonl", data)),
        "parse_json" => drop(fuzz::parse_file("json", data)),
        "condition" => fuzz::check_condition(&String::from_utf8_lossy(data)),
        "rule_file" => fuzz::check_rule_files(&String::from_utf8_lossy(data)),
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

/// The seeds `fuzz/seeds.py` starts the fuzzers from pass: the feed files of `examples/` and `tests/corpus/` in every feed
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
                let summary = fuzz::parse_file(format, &data);
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
    fuzz::check_rule_files(&rules.join("\n#---\n"));
    for text in &rules {
        fuzz::check_rule_files(text);
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
            fuzz::check_rule_files(&fs::read_to_string(&path).unwrap());
        }
    }
}

/// Fixed: `src/alerts/render.rs` ran templates without a bound, so a subject of two nested
/// `range(100000)` loops (10^10 steps) passed `check` and then hung the file's processing.
/// Templates now run on bounded fuel and fall back to the default. A regression would hang
/// the generic replay above; this test fails in 20 s instead.
#[test]
fn a_template_that_loops_for_ever_runs_out_of_fuel_in_time() {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        replay(
            "rule_file",
            &root().join("fuzz/regressions/rule_file/template-nested-loops-hang.toml"),
        );
        let _ = done_tx.send(());
    });
    assert!(
        done_rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .is_ok(),
        "rendering fuzz/regressions/rule_file/template-nested-loops-hang.toml took over 20 s"
    );
}
