//! How an alert's facts are put in words for people (SPEC §5.3, issue 14):
//! what was found (the values that made a rule's `when` true), field labels,
//! values as a reader expects them (times in the daemon's zone, lists
//! joined, codes like `hospital_admission` as words), and advice text as
//! paragraphs and bullet lists.
//!
//! Pure, and careful with data: a value is only reworded when it is plainly
//! a code (lowercase ASCII words joined by `_`), so a substance name such as
//! `N-desethyl isotonitazene` or `mCPP` is always shown exactly as the lab
//! wrote it.

use crate::config::FeedConfig;
use crate::event::{Event, Scalar, Value};
use crate::rules::condition::{CompareOp, Condition, Literal};
use jiff::Timestamp;
use jiff::tz::TimeZone;

/// At most this many found values are named in a headline; the rest are counted.
const MAX_FOUND: usize = 3;

/// The values of `events` that made `when` true, in the order first found,
/// without repeats: the elements a positive `in`, `~` or `==` test matched.
/// Tests under `not`, and comparisons of numbers, say nothing about what was
/// found and are left out.
/// Fields for which `skip` is true are not looked at.
pub fn found_values(
    when: &Condition,
    events: &[Event],
    skip: &dyn Fn(&str) -> bool,
) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    let mut scratch = String::new();
    for event in events {
        collect_found(when, event, false, skip, &mut scratch, &mut found);
    }
    found
}

fn collect_found(
    when: &Condition,
    event: &Event,
    negated: bool,
    skip: &dyn Fn(&str) -> bool,
    scratch: &mut String,
    found: &mut Vec<String>,
) {
    let mut push = |text: &str| {
        let text = text.trim();
        if !text.is_empty() && !found.iter().any(|f| f.eq_ignore_ascii_case(text)) {
            found.push(text.to_string());
        }
    };
    match when {
        Condition::Always | Condition::Exists(_) => {}
        Condition::And(a, b) | Condition::Or(a, b) => {
            collect_found(a, event, negated, skip, scratch, found);
            collect_found(b, event, negated, skip, scratch, found);
        }
        Condition::Not(a) => collect_found(a, event, !negated, skip, scratch, found),
        _ if negated => {}
        Condition::In { field, .. }
        | Condition::Regex { field, .. }
        | Condition::Compare { field, .. }
            if skip(&field.name) => {}
        Condition::In {
            field,
            set,
            negated: false,
        } => {
            for el in elements(event, &field.name) {
                if set.contains(el, scratch) {
                    push(el);
                }
            }
        }
        Condition::Regex {
            field,
            regex,
            negated: false,
        } => {
            for el in elements(event, &field.name) {
                if regex.is_match(el) {
                    push(el);
                }
            }
        }
        Condition::Compare {
            field,
            op: CompareOp::Eq,
            literal: Literal::Text(literal),
        } => {
            for el in elements(event, &field.name) {
                if el.to_lowercase() == *literal {
                    push(el);
                }
            }
        }
        Condition::In { .. } | Condition::Regex { .. } | Condition::Compare { .. } => {}
    }
}

/// The text elements of a field (a list's items, or the one value).
fn elements<'e>(event: &'e Event, field: &str) -> Vec<&'e str> {
    event
        .get(field)
        .map(|v| {
            v.elements()
                .filter_map(|el| match el {
                    Scalar::Text(s) => Some(s),
                    Scalar::Number(_) => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The text a condition expects (`incident_type == "support_provided"`), for
/// saying what a deadline waits for before any such record exists.
pub fn expected_values(when: &Condition) -> Vec<String> {
    let mut out = Vec::new();
    collect_expected(when, false, &mut out);
    out
}

fn collect_expected(when: &Condition, negated: bool, out: &mut Vec<String>) {
    match when {
        Condition::And(a, b) | Condition::Or(a, b) => {
            collect_expected(a, negated, out);
            collect_expected(b, negated, out);
        }
        Condition::Not(a) => collect_expected(a, !negated, out),
        Condition::Compare {
            op: CompareOp::Eq,
            literal: Literal::Text(text),
            ..
        } if !negated && !out.contains(text) => out.push(text.clone()),
        _ => {}
    }
}

/// Found values as a phrase: "Protonitazene", "Protonitazene, Xylazine and 2 more".
pub fn found_phrase(found: &[String]) -> Option<String> {
    let shown: Vec<String> = found.iter().take(MAX_FOUND).map(|f| as_words(f)).collect();
    let phrase = match (shown.as_slice(), found.len().saturating_sub(MAX_FOUND)) {
        ([], _) => return None,
        ([one], 0) => one.clone(),
        (many, 0) => {
            let (last, rest) = many.split_last()?;
            format!("{} and {last}", rest.join(", "))
        }
        (many, more) => format!("{} and {more} more", many.join(", ")),
    };
    Some(sentence_case(&phrase))
}

/// Whether `value` is a code (`hospital_admission`, `firearm_discharge`):
/// lowercase ASCII words joined by underscores. Only such a value is ever
/// reworded; names of substances, places and people never look like this.
fn is_code(value: &str) -> bool {
    value.contains('_')
        && value.split('_').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

/// A code as words (`hospital_admission` → "hospital admission"); anything
/// else exactly as it is.
pub fn as_words(value: &str) -> String {
    if is_code(value) {
        value.replace('_', " ")
    } else {
        value.to_string()
    }
}

/// The first letter in capitals when the first word is all lowercase
/// (`protonitazene` → "Protonitazene"), so a headline reads as a sentence; a
/// word with a capital of its own (`mCPP`, `alpha-PVP`) is left alone.
pub fn sentence_case(text: &str) -> String {
    let first_word = text.split(' ').next().unwrap_or("");
    let mut chars = text.chars();
    match chars.next() {
        Some(c) if c.is_ascii_lowercase() && !first_word.chars().any(char::is_uppercase) => {
            c.to_ascii_uppercase().to_string() + chars.as_str()
        }
        _ => text.to_string(),
    }
}

/// The label of a field: the feed's own, else its name in words
/// (`linked_harm` → "Linked harm"). Field names are the config's, not data.
pub fn label(feed: Option<&FeedConfig>, field: &str) -> String {
    if let Some(label) = feed.and_then(|f| f.label(field)) {
        return label.to_string();
    }
    let words = field.trim().replace(['_', '-'], " ");
    sentence_case(words.trim())
}

/// How the time of a record is introduced: "tested" for `tested_at` (or
/// the feed's label for it, in lowercase), nothing when the feed has no
/// time field (the time is then when the record arrived).
pub fn time_verb(feed: Option<&FeedConfig>) -> String {
    let Some(field) = feed.and_then(|f| f.time_field.as_deref()) else {
        return String::new();
    };
    if let Some(label) = feed.and_then(|f| f.label(field)) {
        return label.to_lowercase();
    }
    let name = field.trim();
    let stem = ["_at", "_time", "_date", "_on"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .filter(|s| !s.is_empty())
        .unwrap_or(name);
    stem.replace(['_', '-'], " ").to_lowercase()
}

/// A record's value as a reader expects it: a list joined with commas, a
/// whole number without `.0`, an RFC 3339 time in `tz` in words, a code as
/// words; everything else exactly as it is.
pub fn show_value(value: &Value, show_time: &dyn Fn(Timestamp) -> String) -> String {
    match value {
        Value::List(items) => items
            .iter()
            .map(|i| i.trim())
            .filter(|i| !i.is_empty())
            .collect::<Vec<_>>()
            .join(", "),
        Value::Number(n) if n.fract() == 0.0 && n.abs() < 1e15 => format!("{}", *n as i64),
        Value::Number(n) => n.to_string(),
        Value::Text(text) => {
            let text = text.trim();
            match text.parse::<Timestamp>() {
                Ok(t) if text.len() >= 20 => show_time(t),
                _ => as_words(text),
            }
        }
    }
}

/// A date as a headline says it: "Tue 4 Nov".
pub fn short_date(t: Timestamp, tz: &TimeZone) -> String {
    t.to_zoned_datetime(tz.clone())
        .strftime("%a %-d %b")
        .to_string()
}

/// A date and time as a headline says it: "Tue 4 Nov 11:30".
pub fn short_time(t: Timestamp, tz: &TimeZone) -> String {
    t.to_zoned_datetime(tz.clone())
        .strftime("%a %-d %b %H:%M")
        .to_string()
}

/// One block of advice text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Block {
    /// A paragraph, its lines joined with spaces.
    Paragraph(String),
    /// Bullet points (lines starting `- ` or `* `), each joined like a paragraph.
    List(Vec<String>),
}

/// Advice as people wrote it in a rule file, as blocks: a blank line ends a
/// paragraph, a single newline inside one is a space, and lines starting
/// `- ` or `* ` are bullets (an indented line after a bullet continues it).
pub fn blocks(text: &str) -> Vec<Block> {
    let mut out: Vec<Block> = Vec::new();
    // Whether the last block is still open to more lines.
    let mut open = false;
    for line in text.lines() {
        let trimmed = line.trim();
        let indented = line.starts_with(char::is_whitespace);
        if trimmed.is_empty() {
            open = false;
            continue;
        }
        let bullet = trimmed
            .strip_prefix("- ")
            .or_else(|| trimmed.strip_prefix("* "));
        match (bullet, out.last_mut(), open) {
            (Some(item), Some(Block::List(items)), true) => items.push(item.trim().to_string()),
            (Some(item), _, _) => out.push(Block::List(vec![item.trim().to_string()])),
            (None, Some(Block::List(items)), true) if indented => {
                if let Some(last) = items.last_mut() {
                    last.push(' ');
                    last.push_str(trimmed);
                }
            }
            (None, Some(Block::Paragraph(p)), true) => {
                p.push(' ');
                p.push_str(trimmed);
            }
            (None, _, _) => out.push(Block::Paragraph(trimmed.to_string())),
        }
        open = true;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::condition::Condition;
    use std::collections::BTreeMap;

    fn condition(source: &str) -> Condition {
        let lists = BTreeMap::from([(
            "nitazenes".to_string(),
            vec!["protonitazene".to_string(), "isotonitazene".to_string()],
        )]);
        Condition::parse(source, &lists).unwrap()
    }

    fn event(fields: &[(&str, Value)]) -> Event {
        let mut f = crate::event::Fields::default();
        for (k, v) in fields {
            f.insert(*k, v.clone());
        }
        Event {
            feed: "drug_testing".into(),
            record_id: None,
            time: Timestamp::UNIX_EPOCH,
            fields: f,
        }
    }

    #[test]
    fn found_values_are_what_made_the_condition_true_as_written() {
        let when = condition(
            r#"substances_major in nitazenes or substances_minor ~ "(?i)nitaz" or incident_type == "firearm_discharge""#,
        );
        let e = event(&[
            (
                "substances_major",
                Value::List(vec!["caffeine".into(), "Protonitazene".into()]),
            ),
            (
                "substances_minor",
                Value::List(vec!["N-desethyl isotonitazene".into()]),
            ),
        ]);
        assert_eq!(
            found_values(&when, &[e.clone(), e], &|_| false),
            ["Protonitazene", "N-desethyl isotonitazene"]
        );
        let not = condition(r#"not (form == "tablet") and amount > 3"#);
        let e = event(&[
            ("form", Value::Text("powder".into())),
            ("amount", Value::Text("5".into())),
        ]);
        assert!(found_values(&not, &[e], &|_| false).is_empty());
        let fired = condition(r#"incident_type == "firearm_discharge""#);
        let e = event(&[("incident_type", Value::Text("firearm_discharge".into()))]);
        assert_eq!(
            found_phrase(&found_values(&fired, &[e], &|_| false)).unwrap(),
            "Firearm discharge"
        );
        assert_eq!(expected_values(&fired), ["firearm_discharge"]);
    }

    #[test]
    fn only_codes_are_reworded_and_substance_names_never() {
        for kept in [
            "mCPP",
            "N-desethyl isotonitazene",
            "5F-MDMB-PICA",
            "2C-B",
            "Bolton",
            "tablet",
            "O'Neil_Smith",
        ] {
            assert_eq!(as_words(kept), kept);
        }
        assert_eq!(as_words("hospital_admission"), "hospital admission");
        assert_eq!(sentence_case("mCPP and xylazine"), "mCPP and xylazine");
        assert_eq!(sentence_case("alpha-PVP"), "alpha-PVP");
        assert_eq!(sentence_case("protonitazene"), "Protonitazene");
        assert_eq!(
            found_phrase(&["a".into(), "b".into(), "c".into(), "d".into(), "e".into()]).unwrap(),
            "A, b, c and 2 more"
        );
        assert_eq!(
            found_phrase(&["xylazine".into(), "mCPP".into()]).unwrap(),
            "Xylazine and mCPP"
        );
    }

    #[test]
    fn values_are_shown_as_people_read_them() {
        let show = |t: Timestamp| short_time(t, &TimeZone::UTC);
        assert_eq!(
            show_value(
                &Value::List(vec!["heroin".into(), " xylazine".into()]),
                &show
            ),
            "heroin, xylazine"
        );
        assert_eq!(show_value(&Value::Number(200.0), &show), "200");
        assert_eq!(
            show_value(&Value::Text("2025-11-04T11:30:00Z".into()), &show),
            "Tue 4 Nov 11:30"
        );
        assert_eq!(show_value(&Value::Text("2025".into()), &show), "2025");
        assert_eq!(show_value(&Value::Text("none".into()), &show), "none");
    }

    #[test]
    fn advice_reflows_into_paragraphs_and_lists() {
        let advice = "A nitazene has been found\nin this area.\n\n- Carry naloxone\n  and give it.\n* Call 999.\nAfter the list.\n\nLast.";
        assert_eq!(
            blocks(advice),
            [
                Block::Paragraph("A nitazene has been found in this area.".into()),
                Block::List(vec![
                    "Carry naloxone and give it.".into(),
                    "Call 999.".into()
                ]),
                Block::Paragraph("After the list.".into()),
                Block::Paragraph("Last.".into()),
            ]
        );
        assert_eq!(
            blocks("Intro:\n- one\n- two"),
            [
                Block::Paragraph("Intro:".into()),
                Block::List(vec!["one".into(), "two".into()])
            ]
        );
    }
}
