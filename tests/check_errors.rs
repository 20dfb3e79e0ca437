//! `earlywarn check` on broken rule files kept as data in `tests/check_errors/`.
//!
//! Each file ends with a `# expect: LINE:COL: MESSAGE` comment: `check` must
//! exit 1 and print exactly `FILE:LINE:COL: MESSAGE` (and nothing else wrong).

mod support;

use std::path::Path;

#[test]
fn every_broken_rule_file_is_reported_at_its_line_and_column() {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/check_errors");
    let template = std::fs::read_to_string(folder.join("config.toml")).unwrap();
    let mut files: Vec<_> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(|c: char| c.is_ascii_digit())
        })
        .collect();
    files.sort();
    assert!(files.len() >= 10, "at least ten broken rule files");
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} has no `# expect:` line", file.display()));
        let config = dir.path().join("earlywarn.toml");
        std::fs::write(&config, template.replace("RULES", &file.to_string_lossy())).unwrap();
        let out = support::earlywarn(&["check", "--config", config.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let wanted = format!("{}:{expect}", file.display());
        if out.status.code() != Some(1) || stderr.trim() != wanted {
            failures.push(format!(
                "{}\n  expected (exit 1): {wanted}\n  got (exit {:?}): {}",
                file.display(),
                out.status.code(),
                stderr.trim()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
