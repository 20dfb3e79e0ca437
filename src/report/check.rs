//! What `earlywarn check` and `earlywarn test` print when the files load.

use crate::config::{Config, FeedConfig};
use crate::rules::RuleSet;
use crate::ruletest::TestResult;
use std::io::{self, Write};
use std::path::Path;

/// `check`'s verdict on a config and rule set that load.
pub fn verdict(config: &Config, rules: &RuleSet) -> String {
    let reviewed = rules.rules.iter().filter(|r| !r.review.is_empty()).count();
    format!(
        "{}: ok: {} feed(s), {} partner(s); {} rule(s) in {} file(s), {} reviewed before sending",
        config.path.display(),
        config.feeds.len(),
        config.partners.len(),
        rules.rules.len(),
        rules.files.len(),
        reviewed
    )
}

/// How many rules the rule index looks up by value, and how many it must
/// evaluate on every row (a rule writer can see what a `not`-only rule costs).
pub fn index_coverage(rules: &RuleSet) -> String {
    let (indexed, always) = rules.index().coverage();
    format!(
        "rule index: {indexed} of {} rule(s) looked up by value, {always} evaluated on every row (no `==`, `in`, `~` or `exists` test that must hold)",
        indexed + always
    )
}

/// A note for a feed whose folder is not there yet (not an error: `run` makes it).
pub fn missing_folder(feed: &FeedConfig) -> String {
    format!(
        "note: feed `{}` folder {} does not exist yet; `earlywarn run` creates it",
        feed.name,
        feed.dir.display()
    )
}

/// `test`'s results, grouped by file, each failure's lines indented under its
/// test, then the totals (or "no tests matched").
pub fn write_test_results(out: &mut impl Write, results: &[TestResult]) -> io::Result<()> {
    let mut current: Option<&Path> = None;
    for r in results {
        if current != Some(r.file.as_path()) {
            writeln!(out, "{}", r.file.display())?;
            current = Some(r.file.as_path());
        }
        if r.passed() {
            writeln!(out, "  ok    {}", r.name)?;
            continue;
        }
        writeln!(out, "  FAIL  {}", r.name)?;
        for line in r.failures.iter().flat_map(|f| f.lines()) {
            writeln!(out, "        {line}")?;
        }
    }
    if results.is_empty() {
        return writeln!(out, "no tests matched");
    }
    let failed = results.iter().filter(|r| !r.passed()).count();
    writeln!(out, "{} passed, {} failed", results.len() - failed, failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn result(file: &str, name: &str, failures: &[&str]) -> TestResult {
        TestResult {
            file: PathBuf::from(file),
            name: name.into(),
            failures: failures.iter().map(|f| f.to_string()).collect(),
        }
    }

    fn text(results: &[TestResult]) -> String {
        let mut out = Vec::new();
        write_test_results(&mut out, results).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn test_results_are_grouped_by_file_with_failures_indented() {
        let results = [
            result("a.test.toml", "fires", &[]),
            result(
                "a.test.toml",
                "stays quiet",
                &["expected no alert\ngot one: x"],
            ),
            result("b.test.toml", "fires", &[]),
        ];
        assert_eq!(
            text(&results),
            "a.test.toml\n  ok    fires\n  FAIL  stays quiet\n        expected no alert\n        got one: x\nb.test.toml\n  ok    fires\n2 passed, 1 failed\n"
        );
        assert_eq!(text(&[]), "no tests matched\n");
    }
}
