//! `earlywarn test`: rule tests, for the person who writes rules (SPEC §6).
//!
//! A test file (`*.test.toml`) names the rules it loads, gives input files of
//! records (feed, arrival time, rows) and an optional final evaluation time,
//! and lists the alerts it expects (rule, group, recipients, text in the
//! subject or body), or `expect_none = true`. Every alert raised must be
//! expected, and every expectation met, so a rule that says too much fails as
//! surely as one that says nothing. Evaluation runs the real engine, routing
//! and rendering with the clock the test gives: no I/O beyond reading the
//! files, nothing sent. Time passes by the tick rule of [`crate::pipeline`]:
//! an input with `at` first ticks to it, events tick as their times pass,
//! and each input ends ticking to its `at` (or latest event time).
//!
//! ```toml
//! rules = ["../drug-alerts.toml"]          # relative to this file; default: the config's rules
//!
//! [[test]]
//! name = "a nitazene in Bolton goes to the panel for review"
//! [[test.input]]
//! feed = "drug_testing"
//! at = "2025-11-04T12:00:00Z"             # when the file arrives; default: its latest event time
//! rows = [{ sample_id = "S1", tested_at = "2025-11-04T11:30:00Z", district = "Bolton", substances_major = "heroin; protonitazene" }]
//! [[test.expect]]
//! rule = "nitazene-detected"
//! group = { district = "Bolton" }
//! recipients = ["dews-panel"]
//! subject_contains = "Nitazene"
//! ```

use crate::alerts::{Audience, first_audience};
use crate::config::Config;
use crate::diagnostic::{Diagnostic, Diagnostics};
use crate::feeds::parse::{RecordShape, event_from_json};
use crate::pipeline::{MemoryLedger, Pipeline, infallible};
use crate::rules::RuleSet;
use crate::rules::engine::{Engine, EngineState};
use jiff::Timestamp;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use toml::Spanned;

/// The outcome of one test.
#[derive(Debug)]
pub struct TestResult {
    pub file: PathBuf,
    pub name: String,
    /// Empty when the test passed; otherwise each problem, in words.
    pub failures: Vec<String>,
}

impl TestResult {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// An alert as a test sees it.
#[derive(Debug, Clone)]
struct Raised {
    rule: String,
    /// The other rules of its merge group that found the same records, and
    /// their groups: an expectation naming one of them matches this alert too.
    reasons: Vec<(String, BTreeMap<String, String>)>,
    group: BTreeMap<String, String>,
    recipients: Vec<String>,
    review: bool,
    subject: String,
    body: String,
    count: u64,
}

impl Raised {
    /// Whether `rule` raised this alert or is one of its reasons.
    fn names(&self, rule: &str) -> bool {
        self.findings().any(|(r, _)| r == rule)
    }

    /// Its rule and group, then each reason's: each can meet one expectation.
    fn findings(&self) -> impl Iterator<Item = (&str, &BTreeMap<String, String>)> {
        std::iter::once((self.rule.as_str(), &self.group))
            .chain(self.reasons.iter().map(|(r, g)| (r.as_str(), g)))
    }

    fn describe(&self) -> String {
        let group = if self.group.is_empty() {
            String::new()
        } else {
            format!(
                " for {}",
                self.group
                    .iter()
                    .map(|(k, v)| format!("{k} = \"{v}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let also = if self.reasons.is_empty() {
            String::new()
        } else {
            let rules: Vec<&str> = self.reasons.iter().map(|(r, _)| r.as_str()).collect();
            format!(" (also {})", rules.join(", "))
        };
        format!(
            "`{}`{group}{also}, {} record(s), {} {} — subject: \"{}\"",
            self.rule,
            self.count,
            if self.review { "as a draft to" } else { "to" },
            if self.recipients.is_empty() {
                "nobody".to_string()
            } else {
                self.recipients.join(", ")
            },
            self.subject
        )
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTestFile {
    /// Rule files, relative to the test file.
    rules: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    test: Vec<RawTest>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTest {
    name: Spanned<String>,
    #[serde(default)]
    input: Vec<RawInput>,
    /// A final evaluation time: deadlines and silence are checked then.
    eval_at: Option<Spanned<String>>,
    #[serde(default)]
    expect: Vec<RawExpect>,
    expect_none: Option<bool>,
    /// Alerts of rules not named in any expectation are not failures.
    #[serde(default)]
    ignore_other_rules: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInput {
    feed: Spanned<String>,
    at: Option<Spanned<String>>,
    #[serde(default)]
    rows: Vec<toml::Table>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawExpect {
    rule: Spanned<String>,
    group: Option<BTreeMap<String, String>>,
    recipients: Option<Vec<String>>,
    subject_contains: Option<String>,
    body_contains: Option<String>,
    /// Whether it goes to reviewers first.
    review: Option<bool>,
    /// How many such alerts (default 1).
    count: Option<usize>,
}

/// Loads and runs every test of `files`; `filter` keeps tests whose name contains it.
/// A test file that cannot be read or has a mistake is an error (exit 1), with file:line:col.
pub fn run_files(
    config: &Config,
    files: &[PathBuf],
    filter: Option<&str>,
) -> Result<Vec<TestResult>, Diagnostics> {
    let mut results = Vec::new();
    let mut errors = Vec::new();
    for path in files {
        match run_file(config, path, filter) {
            Ok(mut r) => results.append(&mut r),
            Err(mut d) => errors.append(&mut d.0),
        }
    }
    if errors.is_empty() {
        Ok(results)
    } else {
        Err(Diagnostics(errors))
    }
}

fn run_file(
    config: &Config,
    path: &Path,
    filter: Option<&str>,
) -> Result<Vec<TestResult>, Diagnostics> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Diagnostic::file(path, format!("cannot read the test file: {e}")))?;
    let file: RawTestFile =
        toml::from_str(&text).map_err(|e| Diagnostic::from_toml(path, &text, &e))?;
    if file.test.is_empty() {
        return Err(Diagnostic::file(path, "this file has no [[test]]").into());
    }
    // The rules under test: the file's own list, else the config's.
    let mut config = config.clone();
    if let Some(rules) = &file.rules {
        let base = path.parent().unwrap_or(Path::new("."));
        let mut resolved = Vec::new();
        for r in rules.get_ref() {
            let pattern = base.join(r).to_string_lossy().into_owned();
            let found = glob::glob(&pattern)
                .map(|mut m| m.next().is_some())
                .unwrap_or(false);
            if !found {
                let message =
                    format!("no rule file matches `{r}` (paths are relative to this test file)");
                return Err(Diagnostic::at(path, &text, rules.span().start, message).into());
            }
            resolved.push(pattern);
        }
        config.daemon.rules = resolved;
    }
    let rules = Arc::new(RuleSet::load(&config)?);
    let mut errors = Vec::new();
    let mut results = Vec::new();
    for test in &file.test {
        if filter.is_some_and(|f| !test.name.get_ref().contains(f)) {
            continue;
        }
        let at = |offset: usize, msg: String| Diagnostic::at(path, &text, offset, msg);
        if test.expect.is_empty() && test.expect_none != Some(true) {
            errors.push(at(test.name.span().start, format!(
                "test \"{}\" expects nothing: add [[test.expect]] tables, or `expect_none = true` if no alert is the point",
                test.name.get_ref()
            )));
            continue;
        }
        for e in &test.expect {
            if rules.get(e.rule.get_ref()).is_none() {
                let hint = crate::diagnostic::suggest(
                    e.rule.get_ref(),
                    rules.rules.iter().map(|r| r.id.as_str()),
                )
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_default();
                errors.push(at(
                    e.rule.span().start,
                    format!("no rule `{}` is loaded{hint}", e.rule.get_ref()),
                ));
            }
        }
        match evaluate(&config, &rules, test, &at) {
            Ok(raised) => results.push(TestResult {
                file: path.to_path_buf(),
                name: test.name.get_ref().clone(),
                failures: compare(test, &raised),
            }),
            Err(d) => errors.push(d),
        }
    }
    if errors.is_empty() {
        Ok(results)
    } else {
        Err(Diagnostics(errors))
    }
}

fn parse_time(
    value: &Spanned<String>,
    at: &dyn Fn(usize, String) -> Diagnostic,
) -> Result<Timestamp, Diagnostic> {
    value.get_ref().trim().parse::<Timestamp>().map_err(|_| {
        at(
            value.span().start,
            format!(
                "`{}` is not a time like 2025-11-04T11:30:00Z",
                value.get_ref()
            ),
        )
    })
}

/// Runs a test's inputs through the engine and reports every alert raised.
fn evaluate(
    config: &Config,
    rules: &Arc<RuleSet>,
    test: &RawTest,
    at: &dyn Fn(usize, String) -> Diagnostic,
) -> Result<Vec<Raised>, Diagnostic> {
    let pipeline = Pipeline::new(config);
    let mut engine = Engine::new(rules.clone(), EngineState::default());
    let mut ledger = MemoryLedger::default();
    let mut alerts: Vec<crate::pipeline::Raised> = Vec::new();
    let mut clock: Option<Timestamp> = None;
    for (n, input) in test.input.iter().enumerate() {
        let Some(feed) = config.feed(input.feed.get_ref()) else {
            let names: Vec<&str> = config.feeds.iter().map(|f| f.name.as_str()).collect();
            return Err(at(
                input.feed.span().start,
                format!(
                    "unknown feed `{}`; the feeds are: {}",
                    input.feed.get_ref(),
                    names.join(", ")
                ),
            ));
        };
        let arrival = input.at.as_ref().map(|a| parse_time(a, at)).transpose()?;
        let shape = RecordShape {
            feed,
            timezone: &config.daemon.timezone,
            default_time: arrival.or(clock).unwrap_or(Timestamp::UNIX_EPOCH),
            // The test's own clock, not the real one, so that a test gives the
            // same answer whenever it runs. An input without an arrival time
            // arrives when its latest record is timed: nothing is ahead of it.
            wall_clock: arrival,
        };
        let mut events = Vec::new();
        for (i, row) in input.rows.iter().enumerate() {
            // A field the feed does not have is a typo that would make a test pass for nothing.
            if let Some(columns) = &feed.fields {
                for key in row.keys() {
                    if !columns.iter().any(|c| c == key) {
                        let hint =
                            crate::diagnostic::suggest(key, columns.iter().map(String::as_str))
                                .map(|s| format!("; did you mean `{s}`?"))
                                .unwrap_or_default();
                        return Err(at(
                            input.feed.span().start,
                            format!(
                                "input {} row {}: feed `{}` has no field `{key}`{hint}",
                                n + 1,
                                i + 1,
                                feed.name
                            ),
                        ));
                    }
                }
            }
            let map: serde_json::Map<String, serde_json::Value> = row
                .iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect();
            let event = event_from_json(&map, &shape).map_err(|reason| {
                at(
                    input.feed.span().start,
                    format!("input {} row {}: {reason}", n + 1, i + 1),
                )
            })?;
            events.push(event);
        }
        let now = arrival
            .or_else(|| events.iter().map(|e| e.time).max())
            .or(clock)
            .unwrap_or(Timestamp::UNIX_EPOCH);
        let mut step = infallible(pipeline.begin(&mut engine, &mut ledger, &feed.name, arrival));
        for e in &events {
            infallible(step.observe(e));
        }
        let input_name = format!("input {}", n + 1);
        let outcome = infallible(step.finish(now, &format!("test-input-{n}"), &input_name));
        alerts.extend(outcome.raised);
        clock = Some(now);
    }
    if let Some(eval) = &test.eval_at {
        let eval = parse_time(eval, at)?;
        alerts.extend(infallible(pipeline.tick(&mut engine, &mut ledger, eval)));
    }
    Ok(alerts
        .into_iter()
        .map(|raised| {
            let alert = &raised.alert;
            let email = raised.first_email;
            Raised {
                rule: alert.rule_id.clone(),
                reasons: alert
                    .reasons
                    .iter()
                    .map(|r| (r.rule_id.clone(), r.group.clone()))
                    .collect(),
                group: alert.group.clone(),
                recipients: raised.recipients,
                review: first_audience(alert) == Audience::Review,
                subject: email
                    .as_ref()
                    .map(|e| e.subject.clone())
                    .unwrap_or_default(),
                body: email.map(|e| e.text).unwrap_or_default(),
                count: alert.event_count,
            }
        })
        .collect())
}

/// A TOML value as the JSON a feed would deliver; TOML dates and times become RFC 3339 text.
fn toml_to_json(v: &toml::Value) -> serde_json::Value {
    match v {
        toml::Value::String(s) => serde_json::Value::String(s.clone()),
        toml::Value::Integer(i) => serde_json::json!(i),
        toml::Value::Float(f) => serde_json::json!(f),
        toml::Value::Boolean(b) => serde_json::Value::String(b.to_string()),
        toml::Value::Datetime(d) => serde_json::Value::String(d.to_string()),
        toml::Value::Array(items) => {
            serde_json::Value::Array(items.iter().map(toml_to_json).collect())
        }
        toml::Value::Table(t) => serde_json::Value::String(toml::to_string(t).unwrap_or_default()),
    }
}

/// Matches expectations against what was raised; returns the failures in words.
fn compare(test: &RawTest, raised: &[Raised]) -> Vec<String> {
    let mut failures = Vec::new();
    // Per alert, which of its findings (its rule, then each reason) met an
    // expectation: a merged alert meets one expectation per finding.
    let mut used: Vec<Vec<bool>> = raised
        .iter()
        .map(|r| vec![false; r.findings().count()])
        .collect();
    for expect in &test.expect {
        let wanted = expect.count.unwrap_or(1);
        let matching: Vec<(usize, usize)> = (0..raised.len())
            .filter_map(|i| {
                let j = raised[i]
                    .findings()
                    .enumerate()
                    .position(|(j, finding)| !used[i][j] && matches(expect, &raised[i], finding))?;
                Some((i, j))
            })
            .collect();
        for &(i, j) in matching.iter().take(wanted) {
            used[i][j] = true;
        }
        if matching.len() < wanted {
            let mut msg = format!("expected {}", describe_expectation(expect, wanted));
            let same_rule: Vec<&Raised> = raised
                .iter()
                .filter(|r| r.names(expect.rule.get_ref()))
                .collect();
            if same_rule.is_empty() {
                msg.push_str(&format!(
                    "\n  but rule `{}` raised no alert",
                    expect.rule.get_ref()
                ));
            } else {
                msg.push_str(&format!("\n  but rule `{}` raised:", expect.rule.get_ref()));
                for r in same_rule {
                    msg.push_str(&format!("\n    - {}", r.describe()));
                    let finding = r
                        .findings()
                        .find(|(rule, _)| rule == expect.rule.get_ref())
                        .unwrap_or((&r.rule, &r.group));
                    for why in mismatches(expect, r, finding) {
                        msg.push_str(&format!("\n      ({why})"));
                    }
                }
            }
            failures.push(msg);
        }
    }
    let named: Vec<&str> = test
        .expect
        .iter()
        .map(|e| e.rule.get_ref().as_str())
        .collect();
    let unexpected: Vec<&Raised> = raised
        .iter()
        .enumerate()
        .filter(|(i, r)| {
            !used[*i].contains(&true)
                && (!test.ignore_other_rules || named.iter().any(|rule| r.names(rule)))
        })
        .map(|(_, r)| r)
        .collect();
    if !unexpected.is_empty() {
        let mut msg = if test.expect_none == Some(true) && test.expect.is_empty() {
            "expected no alerts, but got:".to_string()
        } else {
            "got alerts the test does not expect:".to_string()
        };
        for r in unexpected {
            msg.push_str(&format!("\n    - {}", r.describe()));
        }
        failures.push(msg);
    }
    failures
}

/// Whether `r` meets `expect` through `finding` (its rule, or a reason's).
fn matches(expect: &RawExpect, r: &Raised, finding: (&str, &BTreeMap<String, String>)) -> bool {
    finding.0 == expect.rule.get_ref() && mismatches(expect, r, finding).is_empty()
}

/// The ways `r` differs from `expect`, in words; the group compared is
/// `finding`'s (a reason keeps its own rule's group).
fn mismatches(
    expect: &RawExpect,
    r: &Raised,
    finding: (&str, &BTreeMap<String, String>),
) -> Vec<String> {
    let mut why = Vec::new();
    if let Some(group) = &expect.group {
        for (k, v) in group {
            match finding.1.get(k) {
                Some(actual) if actual.eq_ignore_ascii_case(v) => {}
                Some(actual) => why.push(format!("its {k} is \"{actual}\", not \"{v}\"")),
                None => why.push(format!("it is not grouped by {k}")),
            }
        }
    }
    if let Some(recipients) = &expect.recipients {
        let mut want = recipients.clone();
        want.sort();
        let mut got = r.recipients.clone();
        got.sort();
        if want != got {
            why.push(format!(
                "it goes to {}, not {}",
                if got.is_empty() {
                    "nobody".into()
                } else {
                    got.join(", ")
                },
                want.join(", ")
            ));
        }
    }
    if let Some(text) = &expect.subject_contains
        && !r.subject.to_lowercase().contains(&text.to_lowercase())
    {
        why.push(format!("its subject does not contain \"{text}\""));
    }
    if let Some(text) = &expect.body_contains
        && !r.body.to_lowercase().contains(&text.to_lowercase())
    {
        why.push(format!("its email text does not contain \"{text}\""));
    }
    if let Some(review) = expect.review
        && review != r.review
    {
        why.push(if r.review {
            "it goes to reviewers first".into()
        } else {
            "it does not go to reviewers first".to_string()
        });
    }
    why
}

fn describe_expectation(e: &RawExpect, count: usize) -> String {
    let mut s = if count == 1 {
        format!("an alert from `{}`", e.rule.get_ref())
    } else {
        format!("{count} alerts from `{}`", e.rule.get_ref())
    };
    if let Some(group) = &e.group {
        s.push_str(&format!(
            " for {}",
            group
                .iter()
                .map(|(k, v)| format!("{k} = \"{v}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if let Some(r) = &e.recipients {
        s.push_str(&format!(" to {}", r.join(", ")));
    }
    if let Some(t) = &e.subject_contains {
        s.push_str(&format!(" with \"{t}\" in the subject"));
    }
    if let Some(t) = &e.body_contains {
        s.push_str(&format!(" with \"{t}\" in the text"));
    }
    if e.review == Some(true) {
        s.push_str(" (to reviewers first)");
    }
    s
}
