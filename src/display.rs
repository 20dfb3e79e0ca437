//! Untrusted text made safe to print: file names, field values and reasons that
//! came from a producer, shown in logs and on a terminal.
//!
//! A newline in a file name must not forge a second log line, and an escape
//! sequence (colours, cursor moves, OSC-8 links) must not drive the terminal of
//! the person running `status` or `alerts show`. So every control character
//! (C0, DEL, C1) and the Unicode line and paragraph separators are shown as
//! visible escapes (`\n`, `\x1b`, `\u{2028}`), and a backslash as `\\` so the
//! escapes cannot be faked. Printable text, accents included, is left alone.
//!
//! Pure: no I/O.

use std::borrow::Cow;
use std::fmt;

/// Whether `c` must not reach a log line or a terminal as it is.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || c == '\\'
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}')
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// Whether `text` holds a character that [`escape_controls`] would escape,
/// other than a backslash: for refusing such text where people type it.
pub fn contains_controls(text: &str) -> bool {
    text.chars().any(|c| c != '\\' && needs_escape(c))
}

/// `text` with every control character shown as a visible escape.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        push_escaped(&mut out, c);
    }
    Cow::Owned(out)
}

fn push_escaped(out: &mut String, c: char) {
    use fmt::Write;
    match c {
        '\\' => out.push_str("\\\\"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if needs_escape(c) && (c as u32) < 0x100 => {
            // Writing to a String cannot fail.
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c if needs_escape(c) => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
        c => out.push(c),
    }
}

/// Shows untrusted text escaped: `tracing::info!(file = %Escaped(&name), ...)`.
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&escape_controls(self.0))
    }
}

/// A path's final name as text, escaped; for paths whose names are not UTF-8
/// the invalid bytes show as U+FFFD.
pub fn escaped_name(path: &std::path::Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    escape_controls(&name).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_text_is_untouched() {
        assert!(matches!(
            escape_controls("résultats nov.csv"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn controls_and_escape_sequences_become_visible() {
        assert_eq!(
            escape_controls("a\nINFO forged\r\x1b]8;;http://x\x07b\\"),
            "a\\nINFO forged\\r\\x1b]8;;http://x\\x07b\\\\"
        );
        assert_eq!(escape_controls("\u{9b}31m"), "\\x9b31m");
        assert_eq!(
            escape_controls("x\u{2028}y\u{202e}"),
            "x\\u{2028}y\\u{202e}"
        );
        assert_eq!(Escaped("tab\there").to_string(), "tab\\there");
    }
}
