//! Errors that point at a place in a user's file: `file:line:col: message`.
//!
//! Config and rule files are written by people, so every problem found in
//! them is reported with the place to look. Offsets are byte offsets into the
//! file text; lines and columns count from 1, columns in characters.

use std::fmt;
use std::path::{Path, PathBuf};

/// A problem at a place in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub path: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl Diagnostic {
    /// A diagnostic at byte `offset` of `text` (the contents of `path`).
    pub fn at(path: &Path, text: &str, offset: usize, message: impl Into<String>) -> Diagnostic {
        let (line, column) = line_col(text, offset);
        Diagnostic {
            path: path.to_path_buf(),
            line,
            column,
            message: message.into(),
        }
    }

    /// A diagnostic about a whole file (line 1, column 1).
    pub fn file(path: &Path, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            path: path.to_path_buf(),
            line: 1,
            column: 1,
            message: message.into(),
        }
    }

    /// Turns a `toml` parse or type error into a diagnostic.
    pub fn from_toml(path: &Path, text: &str, err: &toml::de::Error) -> Diagnostic {
        let offset = err.span().map(|s| s.start).unwrap_or(0);
        // The toml message is multi-line (it quotes the source); keep its gist.
        let mut message = friendlier_toml_message(err.message().trim());
        // The commonest slip: a condition in double quotes that holds double quotes itself.
        let line_start = text[..offset.min(text.len())]
            .rfind('\n')
            .map(|i| i + 1)
            .unwrap_or(0);
        let line = text[line_start..].lines().next().unwrap_or("");
        if message.contains("expected newline")
            && line.trim_start().starts_with("when")
            && line.contains("= \"")
        {
            message = "this `when` is in double quotes but holds double quotes too; put the condition in single quotes: when = 'district == \"Bolton\"'".into();
        }
        Diagnostic::at(path, text, offset, message)
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.path.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

impl std::error::Error for Diagnostic {}

/// A list of diagnostics, reported together so a user fixes them in one pass.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

impl From<Diagnostic> for Diagnostics {
    fn from(d: Diagnostic) -> Self {
        Diagnostics(vec![d])
    }
}

/// Serde's "unknown field `x`, expected one of `a`, `b`" becomes
/// "unknown key `x`; did you mean `a`?" (or the list, when nothing is close).
fn friendlier_toml_message(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        let (found, expected) = rest.split_once(", expected ").unwrap_or((rest, ""));
        let want = match expected {
            e if e.starts_with('i') || e.starts_with('u') || e.contains("integer") => {
                "a whole number, without quotes (like `count = 3`)"
            }
            e if e.starts_with('f') => "a number, without quotes (like `factor = 2.0`)",
            e if e.contains("sequence") => "a list in square brackets (like `[\"district\"]`)",
            e if e.contains("bool") => "true or false, without quotes",
            e if e.contains("string") => "text in quotes",
            e => e,
        };
        return format!("expected {want}, found {found}");
    }
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.to_string();
    };
    let Some((key, expected)) = rest.split_once('`') else {
        return message.to_string();
    };
    let names: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    match suggest(key, names.iter().copied()) {
        Some(s) => format!("unknown key `{key}`; did you mean `{s}`?"),
        None if names.is_empty() => format!("unknown key `{key}`"),
        None => format!(
            "unknown key `{key}`; the keys here are: {}",
            names.join(", ")
        ),
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// The closest of `candidates` to `word`, if it is close enough to be a likely typo.
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = word.to_lowercase();
    candidates
        .into_iter()
        .map(|c| (edit_distance(&lower, &c.to_lowercase()), c))
        .filter(|(d, c)| {
            *d <= (c.chars().count().max(3) / 3).max(1)
                || c.to_lowercase().starts_with(&lower) && lower.len() >= 3
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// A word that must be one of a fixed set (a format, a kind, a severity): its
/// value, or the message for a typo, "unknown WHAT `VALUE`; did you mean `X`?",
/// or, when nothing is close, "unknown WHAT `VALUE`; use A, B or C".
///
/// A name whose value an earlier name already has is an alias (`ndjson` for
/// `jsonl`): accepted, but neither listed nor suggested, so a message names
/// each choice once.
pub fn choice<T: Copy + PartialEq>(
    value: &str,
    choices: &[(&str, T)],
    what: &str,
) -> Result<T, String> {
    pick(value, choices, what, |name| name == value)
}

/// [`choice`] where `Critical` and `critical` are the same word.
pub fn choice_ignoring_case<T: Copy + PartialEq>(
    value: &str,
    choices: &[(&str, T)],
    what: &str,
) -> Result<T, String> {
    pick(value, choices, what, |name| {
        name.eq_ignore_ascii_case(value)
    })
}

fn pick<T: Copy + PartialEq>(
    value: &str,
    choices: &[(&str, T)],
    what: &str,
    matches: impl Fn(&str) -> bool,
) -> Result<T, String> {
    if let Some((_, found)) = choices.iter().find(|(name, _)| matches(name)) {
        return Ok(*found);
    }
    let offered: Vec<&str> = choices
        .iter()
        .enumerate()
        .filter(|(i, (_, v))| !choices[..*i].iter().any(|(_, earlier)| earlier == v))
        .map(|(_, (name, _))| *name)
        .collect();
    Err(match suggest(value, offered.iter().copied()) {
        Some(s) => format!("unknown {what} `{value}`; did you mean `{s}`?"),
        None => format!("unknown {what} `{value}`; use {}", one_of(&offered)),
    })
}

/// `a`, `a or b`, `a, b or c`.
fn one_of(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => one.to_string(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_columns_count_from_one() {
        let text = "ab\ncdé\nf";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 3), (2, 1));
        assert_eq!(line_col(text, 7), (2, 4));
        assert_eq!(line_col(text, 999), (3, 2));
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Format {
        Csv,
        Jsonl,
        Json,
    }
    const FORMATS: &[(&str, Format)] = &[
        ("csv", Format::Csv),
        ("jsonl", Format::Jsonl),
        ("ndjson", Format::Jsonl),
        ("json", Format::Json),
    ];

    #[test]
    fn a_choice_is_one_of_its_names_or_a_message_naming_them() {
        assert_eq!(choice("csv", FORMATS, "format"), Ok(Format::Csv));
        assert_eq!(choice("ndjson", FORMATS, "format"), Ok(Format::Jsonl));
        assert_eq!(
            choice("CSV", FORMATS, "format"),
            Err("unknown format `CSV`; did you mean `csv`?".into())
        );
        assert_eq!(
            choice_ignoring_case("CSV", FORMATS, "format"),
            Ok(Format::Csv)
        );
        assert_eq!(
            choice("jsnl", FORMATS, "format"),
            Err("unknown format `jsnl`; did you mean `jsonl`?".into())
        );
        assert_eq!(
            choice("xml", FORMATS, "format"),
            Err("unknown format `xml`; use csv, jsonl or json".into()),
            "an alias is accepted but not listed"
        );
        assert_eq!(
            choice("x", &[("move", 1), ("delete", 2)], "on_done"),
            Err("unknown on_done `x`; use move or delete".into())
        );
    }

    #[test]
    fn suggestions_catch_typos_only() {
        let names = ["nitazenes", "benzodiazepines", "cathinones"];
        assert_eq!(suggest("nitazene", names), Some("nitazenes"));
        assert_eq!(suggest("Benzodiazepine", names), Some("benzodiazepines"));
        assert_eq!(suggest("xylazine", names), None);
    }
}
