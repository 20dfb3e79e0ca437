//! Rules: loading rule files into a validated [`RuleSet`], and the engine that evaluates them.
//!
//! A rule set is loaded whole or refused whole: [`RuleSet::load`] returns every
//! problem it finds across all files, each with file, line and column, and
//! never a partial set. Conditions are compiled, lists resolved and templates
//! parsed here, once. This module reads the rule files; everything below it
//! ([`condition`], [`engine`]) is pure.

pub mod condition;
pub mod engine;
pub mod index;
pub mod record;

use crate::config::{Config, FeedConfig, Severity, parse_duration, unknown_partner_message};
use crate::diagnostic::{Diagnostic, Diagnostics, choice, suggest};
use condition::Condition;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// A validated, compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub feed: String,
    pub kind: RuleKind,
    pub when: Condition,
    /// The `when` text as written, for status and emails.
    pub when_source: Option<String>,
    pub severity: Severity,
    pub notify: Vec<String>,
    pub review: Vec<String>,
    /// How many different reviewers must approve before it goes to `notify` (1..=5).
    pub approvals: u32,
    /// Reviewers (and `ops`) are reminded once if a draft is still undecided this long after it was raised.
    pub review_within: Option<Duration>,
    /// A partner that has not confirmed receipt this long after the alert went out
    /// is sent it again marked REMINDER, and `ops` are told, once (SPEC §10).
    pub ack_within: Option<Duration>,
    pub advice: Option<String>,
    pub cooldown: Option<Duration>,
    /// At most this many alerts from one file; further matches are folded
    /// into one summary alert, counted among them (SPEC §5.2).
    pub max_alerts: u64,
    /// The merge group (`merge = "NAME"`): this rule's and its partners' alerts
    /// about the same records in one batch become one alert naming every reason.
    pub merge: Option<String>,
    pub group_by: Vec<String>,
    pub subject: Option<String>,
    pub body: Option<String>,
    /// The feed's district field, copied here so the engine can name an alert's district.
    pub district_field: String,
    /// The file the rule came from.
    pub source: PathBuf,
}

/// What makes a rule fire (SPEC §5.2).
#[derive(Debug, Clone)]
pub enum RuleKind {
    /// Every matching event; one alert per group per file.
    Match,
    /// At least `count` matching events within `within` (event time), per group.
    Threshold { count: u64, within: Duration },
    /// A matching event opens a deadline for its `key`; an `until` event with the
    /// same key closes it; still open `within` after the opening event's time: escalate.
    Deadline {
        key: String,
        until_feed: String,
        until_when: Condition,
        within: Duration,
        /// Partners told when a deadline opens (empty: nobody).
        notify_on_open: Vec<String>,
        /// Partners told when a deadline closes (empty: nobody).
        notify_on_close: Vec<String>,
    },
    /// A value of `field` (each element of a list) never seen before.
    FirstSeen {
        field: String,
        /// Normalised values already known, so the first file does not alert on everything.
        known: std::collections::HashSet<String>,
    },
    /// Matching events in the last `within` reach `factor` times the average of
    /// the `baseline` period's windows, and at least `min_count`.
    Rate {
        within: Duration,
        factor: f64,
        baseline: Duration,
        min_count: u64,
    },
    /// The rule's feed has delivered no file for `silent_for`.
    Silence { silent_for: Duration },
}

impl RuleKind {
    pub fn name(&self) -> &'static str {
        match self {
            RuleKind::Match => "match",
            RuleKind::Threshold { .. } => "threshold",
            RuleKind::Deadline { .. } => "deadline",
            RuleKind::FirstSeen { .. } => "first_seen",
            RuleKind::Rate { .. } => "rate",
            RuleKind::Silence { .. } => "silence",
        }
    }
}

/// `max_alerts` when a rule does not set it.
pub const DEFAULT_MAX_ALERTS: u64 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Match,
    Threshold,
    Deadline,
    FirstSeen,
    Rate,
    Silence,
}

const KINDS: &[(&str, Kind)] = &[
    ("match", Kind::Match),
    ("threshold", Kind::Threshold),
    ("deadline", Kind::Deadline),
    ("first_seen", Kind::FirstSeen),
    ("rate", Kind::Rate),
    ("silence", Kind::Silence),
];

/// Keys that belong to some kinds only, with those kinds: elsewhere they are
/// mistakes worth pointing out.
fn kind_keys(raw: &RawRule) -> [(&'static str, Option<usize>, &'static [&'static str]); 12] {
    fn at<T>(value: &Option<Spanned<T>>) -> Option<usize> {
        value.as_ref().map(|v| v.span().start)
    }
    [
        ("count", at(&raw.count), &["threshold"]),
        (
            "within",
            at(&raw.within),
            &["threshold", "deadline", "rate"],
        ),
        ("key", at(&raw.key), &["deadline"]),
        ("until", at(&raw.until), &["deadline"]),
        ("notify_on_open", at(&raw.notify_on_open), &["deadline"]),
        ("notify_on_close", at(&raw.notify_on_close), &["deadline"]),
        ("field", at(&raw.field), &["first_seen"]),
        ("known", at(&raw.known), &["first_seen"]),
        ("factor", at(&raw.factor), &["rate"]),
        ("baseline", at(&raw.baseline), &["rate"]),
        ("min_count", at(&raw.min_count), &["rate"]),
        ("for", at(&raw.silent_for), &["silence"]),
    ]
}

/// Reads the kind and its keys, reporting missing or misplaced keys.
fn parse_kind(
    raw: &RawRule,
    config: &Config,
    lists: &BTreeMap<String, Vec<String>>,
    report: &mut Report,
) -> Option<RuleKind> {
    let name = raw
        .kind
        .as_ref()
        .map(|k| k.get_ref().as_str())
        .unwrap_or("match");
    let kind = match choice(name, KINDS, "kind") {
        Ok(kind) => kind,
        Err(message) => {
            let at = raw.kind.as_ref().map(|k| k.span().start);
            report.at(at.unwrap_or(raw.id.span().start), message);
            return None;
        }
    };
    let mut keys_fit = true;
    for (key, at, kinds) in kind_keys(raw) {
        if let Some(at) = at
            && !kinds.contains(&name)
        {
            let owners = match kinds {
                [one] => one.to_string(),
                [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
                [] => String::new(),
            };
            report.at(
                at,
                format!("`{key}` is a key of {owners} rules, not of `{name}` rules"),
            );
            keys_fit = false;
        }
    }
    let mut keys = KindKeys { raw, name, report };
    let parsed = match kind {
        Kind::Match => Some(RuleKind::Match),
        Kind::Threshold => keys.threshold(),
        Kind::Deadline => keys.deadline(config, lists),
        Kind::FirstSeen => keys.first_seen(),
        Kind::Rate => keys.rate(),
        Kind::Silence => keys
            .duration(&raw.silent_for, "for", "6h")
            .map(|silent_for| RuleKind::Silence { silent_for }),
    };
    if keys_fit { parsed } else { None }
}

/// The keys of one kind of rule, read with every problem reported.
struct KindKeys<'r, 'a> {
    raw: &'r RawRule,
    /// The kind as written, for messages.
    name: &'r str,
    report: &'r mut Report<'a>,
}

impl KindKeys<'_, '_> {
    /// A key the kind needs is absent: reported at the rule's id.
    fn missing(&mut self, message: String) {
        let at = self.raw.id.span().start;
        self.report.at(at, message);
    }

    /// A duration the kind needs, longer than zero.
    fn duration(
        &mut self,
        value: &Option<Spanned<String>>,
        key: &str,
        example: &str,
    ) -> Option<Duration> {
        let Some(v) = value else {
            let kind = self.name;
            self.missing(format!(
                "a {kind} rule needs `{key}` (a duration like \"{example}\")"
            ));
            return None;
        };
        match parse_duration(v.get_ref()) {
            Ok(d) if d.is_zero() => {
                self.report
                    .at(v.span().start, format!("`{key}` must be longer than zero"));
                None
            }
            Ok(d) => Some(d),
            Err(message) => {
                self.report.at(v.span().start, message);
                None
            }
        }
    }

    fn threshold(&mut self) -> Option<RuleKind> {
        let raw = self.raw;
        let within = self.duration(&raw.within, "within", "7d");
        let count = match &raw.count {
            None => {
                self.missing(
                    "a threshold rule needs `count` (how many events make an alert, like 3)".into(),
                );
                None
            }
            Some(c) if *c.get_ref() < 1 => {
                self.report.at(c.span().start, "`count` must be at least 1");
                None
            }
            Some(c) => Some(*c.get_ref() as u64),
        };
        Some(RuleKind::Threshold {
            count: count?,
            within: within?,
        })
    }

    fn deadline(
        &mut self,
        config: &Config,
        lists: &BTreeMap<String, Vec<String>>,
    ) -> Option<RuleKind> {
        let raw = self.raw;
        let within = self.duration(&raw.within, "within", "24h");
        let key = match &raw.key {
            Some(k) => Some(k.get_ref().clone()),
            None => {
                self.missing("a deadline rule needs `key` (the field that links the closing record, like \"incident_ref\")".into());
                None
            }
        };
        let until = self.until(config, lists);
        let on_open = partner_list(&raw.notify_on_open, raw, config, self.report);
        let on_close = partner_list(&raw.notify_on_close, raw, config, self.report);
        let (until_feed, until_when) = until?;
        Some(RuleKind::Deadline {
            key: key?,
            until_feed,
            until_when,
            within: within?,
            notify_on_open: on_open?,
            notify_on_close: on_close?,
        })
    }

    /// A deadline's `until`: the feed and condition of the record that closes it.
    fn until(
        &mut self,
        config: &Config,
        lists: &BTreeMap<String, Vec<String>>,
    ) -> Option<(String, Condition)> {
        let Some(u) = &self.raw.until else {
            self.missing("a deadline rule needs `until = { feed = \"...\", when = '...' }` (the record that closes it)".into());
            return None;
        };
        let u = u.get_ref();
        let feed_ok = config.feed(u.feed.get_ref()).is_some();
        if !feed_ok {
            let hint = suggest(
                u.feed.get_ref(),
                config.feeds.iter().map(|f| f.name.as_str()),
            )
            .map(|s| format!("; did you mean `{s}`?"))
            .unwrap_or_default();
            self.report.at(
                u.feed.span().start,
                format!("unknown feed `{}` in `until`{hint}", u.feed.get_ref()),
            );
        }
        let when = condition(&u.when, lists, self.report);
        if feed_ok {
            when.map(|c| (u.feed.get_ref().clone(), c))
        } else {
            None
        }
    }

    fn first_seen(&mut self) -> Option<RuleKind> {
        let raw = self.raw;
        let Some(field) = &raw.field else {
            self.missing("a first_seen rule needs `field` (the field whose values are watched, like \"substances_major\")".into());
            return None;
        };
        let known = raw
            .known
            .as_ref()
            .map(|k| {
                k.get_ref()
                    .iter()
                    .map(|v| crate::event::normalise_term(v))
                    .collect()
            })
            .unwrap_or_default();
        Some(RuleKind::FirstSeen {
            field: field.get_ref().clone(),
            known,
        })
    }

    fn rate(&mut self) -> Option<RuleKind> {
        let raw = self.raw;
        let within = self.duration(&raw.within, "within", "7d");
        let baseline = self.duration(&raw.baseline, "baseline", "28d");
        let factor = match &raw.factor {
            None => {
                self.missing(
                    "a rate rule needs `factor` (how many times the usual rate, like 2.0)".into(),
                );
                None
            }
            Some(f) if f.get_ref().is_nan() || *f.get_ref() <= 0.0 => {
                self.report
                    .at(f.span().start, "`factor` must be more than 0");
                None
            }
            Some(f) => Some(*f.get_ref()),
        };
        let min_count = raw
            .min_count
            .as_ref()
            .map(|m| *m.get_ref() as u64)
            .unwrap_or(1);
        if let (Some(w), Some(b)) = (within, baseline)
            && b < w
        {
            let at = raw.baseline.as_ref().map(|v| v.span().start);
            self.report.at(at.unwrap_or(raw.id.span().start), "`baseline` must be at least as long as `within`: it is the history the current window is compared with");
            return None;
        }
        Some(RuleKind::Rate {
            within: within?,
            factor: factor?,
            baseline: baseline?,
            min_count,
        })
    }
}

/// A `when` condition (of a rule or its `until`): `Always` when absent.
fn condition(
    value: &Option<Spanned<String>>,
    lists: &BTreeMap<String, Vec<String>>,
    report: &mut Report,
) -> Option<Condition> {
    let Some(w) = value else {
        return Some(Condition::Always);
    };
    Condition::parse(w.get_ref(), lists)
        .map_err(|e| report.at(report.string_at(w.span().start) + e.offset, e.message))
        .ok()
}

/// `notify_on_open` / `notify_on_close`: `true` (the rule's notify list), `false`, or partner ids.
fn partner_list(
    value: &Option<Spanned<BoolOrList>>,
    raw: &RawRule,
    config: &Config,
    report: &mut Report,
) -> Option<Vec<String>> {
    match value.as_ref().map(|v| v.get_ref()) {
        None | Some(BoolOrList::Bool(false)) => Some(Vec::new()),
        Some(BoolOrList::Bool(true)) => {
            Some(raw.notify.iter().map(|p| p.get_ref().clone()).collect())
        }
        Some(BoolOrList::List(ids)) => {
            let at = value.as_ref().map(|v| v.span().start).unwrap_or(0);
            let mut ok = true;
            for p in ids {
                if config.partner(p).is_none() {
                    report.at(at, unknown_partner_message(p, &config.partners));
                    ok = false;
                }
            }
            ok.then(|| ids.clone())
        }
    }
}

/// Refuses a sensitive field where its value would reach every partner, with or
/// without the ISA (SPEC §5.3): in `group_by`, as a deadline `key` (of either
/// feed), as a `first_seen` `field`, or named in the `subject` template. The
/// renderer withholds such values anyway; refusing them here tells the rule
/// writer at once, rather than sending partners "[withheld]" where the point was.
fn refuse_sensitive_uses(
    raw: &RawRule,
    feed: &crate::config::FeedConfig,
    until_feed: Option<&crate::config::FeedConfig>,
    report: &mut Report,
) {
    let sensitive_in = |name: &str| -> Option<&str> {
        [Some(feed), until_feed]
            .into_iter()
            .flatten()
            .find(|f| f.is_sensitive(name))
            .map(|f| f.name.as_str())
    };
    for g in &raw.group_by {
        if feed.is_sensitive(g.get_ref()) {
            report.at(
                g.span().start,
                format!(
                    "`{}` is sensitive in feed `{}`: a `group_by` value is shown in the subject and the email of every partner, including those without the ISA; group by a field that is not sensitive (a district, not a location)",
                    g.get_ref(),
                    feed.name
                ),
            );
        }
    }
    if let Some(key) = &raw.key
        && let Some(in_feed) = sensitive_in(key.get_ref())
    {
        report.at(
            key.span().start,
            format!(
                "`{}` is sensitive in feed `{in_feed}`: a deadline's key is shown in the subject and the Due line of every partner's email, including those without the ISA; link the records by a reference that is not sensitive (like `incident_ref`)",
                key.get_ref()
            ),
        );
    }
    if let Some(field) = &raw.field
        && feed.is_sensitive(field.get_ref())
    {
        report.at(
            field.span().start,
            format!(
                "`{}` is sensitive in feed `{}`: a first_seen rule puts each new value in the subject, which reaches every partner, including those without the ISA; watch a field that is not sensitive",
                field.get_ref(),
                feed.name
            ),
        );
    }
    if let Some(subject) = &raw.subject {
        let base = report.string_at(subject.span().start);
        let mut reported = std::collections::HashSet::new();
        for reference in crate::alerts::render::field_references(subject.get_ref()) {
            if let Some(in_feed) = sensitive_in(&reference.name)
                && reported.insert(crate::config::field_key(&reference.name))
            {
                report.at(
                    base + reference.offset,
                    format!(
                        "`{}` is sensitive in feed `{in_feed}`: a value in the subject reaches every partner, including those without the ISA; take it out of the subject, or use it in the body, where it is withheld from partners without the ISA",
                        reference.name
                    ),
                );
            }
        }
    }
}

/// Every rule in force, in load order.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    pub files: Vec<PathBuf>,
    /// Every field name the rules' conditions read, by slot (see `FieldRef`).
    /// Shared, so evaluation caches can tell one rule set's slots from another's.
    pub field_slots: std::sync::Arc<[String]>,
    /// The rules' subject and lead templates, parsed once here.
    pub templates: crate::alerts::render::Templates,
    /// Which rules each row needs evaluated (`index`), built once here.
    /// Private: only a complete `from_sources` builds a set with rules.
    index: index::RuleIndex,
}

impl RuleSet {
    /// Loads every rule file named by the config's `rules` globs.
    pub fn load(config: &Config) -> Result<RuleSet, Diagnostics> {
        let files = rule_files(config)?;
        let mut sources = Vec::new();
        for path in &files {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Diagnostic::file(path, format!("cannot read the rule file: {e}")))?;
            sources.push((path.clone(), text));
        }
        RuleSet::from_sources(config, &sources)
    }

    /// Builds a rule set from (path, text) pairs; the paths are only for messages.
    pub fn from_sources(
        config: &Config,
        sources: &[(PathBuf, String)],
    ) -> Result<RuleSet, Diagnostics> {
        let mut errors = Vec::new();
        let ParsedFiles { lists, files } = parse_files(sources, &mut errors);
        let mut rules = Vec::new();
        let mut ids: HashMap<String, PathBuf> = HashMap::new();
        let mut groups: HashMap<String, MergeGroup> = HashMap::new();
        for (path, text, file) in files {
            let mut report = Report {
                path,
                text,
                errors: &mut errors,
            };
            for raw in file.rule {
                check_id(&raw, &mut ids, &mut report);
                let merge_at = raw.merge.as_ref().map(|m| report.string_at(m.span().start));
                let rule = load_rule(raw, config, &lists, &mut report);
                if let (Some(rule), Some(at)) = (&rule, merge_at) {
                    check_merge_group(rule, at, &mut groups, &mut report);
                }
                rules.extend(rule);
            }
        }
        if !errors.is_empty() {
            return Err(Diagnostics(errors));
        }
        // One slot per distinct field name and one atom per distinct test
        // across all conditions.
        let mut index = condition::ConditionIndex::default();
        for rule in &mut rules {
            rule.when.index_into(&mut index);
            if let RuleKind::Deadline { until_when, .. } = &mut rule.kind {
                until_when.index_into(&mut index);
            }
        }
        // The fields a match is grouped by (and a first-seen rule's field) are
        // read for every match: a row
        // not yet made into an event (replay's) gives them by slot too.
        for rule in &rules {
            for field in &rule.group_by {
                index.add_field(field);
            }
            if let RuleKind::FirstSeen { field, .. } = &rule.kind {
                index.add_field(field);
            }
        }
        Ok(RuleSet {
            templates: crate::alerts::render::Templates::compile(&rules),
            index: index::RuleIndex::build(&rules),
            rules,
            files: sources.iter().map(|(p, _)| p.clone()).collect(),
            field_slots: index.into_slots(),
        })
    }

    pub fn get(&self, id: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.id == id)
    }

    /// The prefilter that picks, per row, the rules worth evaluating.
    pub fn index(&self) -> &index::RuleIndex {
        &self.index
    }
}

/// Where one rule file's problems go, each placed at its `file:line:col`.
struct Report<'a> {
    path: &'a Path,
    text: &'a str,
    errors: &'a mut Vec<Diagnostic>,
}

impl Report<'_> {
    fn at(&mut self, offset: usize, message: impl Into<String>) {
        self.errors
            .push(Diagnostic::at(self.path, self.text, offset, message));
    }

    /// Where a TOML string's content starts, given the offset of its opening quote.
    fn string_at(&self, quote_at: usize) -> usize {
        string_content_offset(self.text, quote_at)
    }
}

/// Every rule file parsed, and the `[lists]` of all of them, which every file shares.
struct ParsedFiles<'s> {
    lists: BTreeMap<String, Vec<String>>,
    files: Vec<(&'s Path, &'s str, RawRuleFile)>,
}

/// Parses every file and gathers its lists: a list may live in its own file,
/// but each name is defined once.
fn parse_files<'s>(
    sources: &'s [(PathBuf, String)],
    errors: &mut Vec<Diagnostic>,
) -> ParsedFiles<'s> {
    let mut lists = BTreeMap::new();
    let mut list_origin: HashMap<String, &Path> = HashMap::new();
    let mut files = Vec::new();
    for (path, text) in sources {
        let file = match toml::from_str::<RawRuleFile>(text) {
            Ok(file) => file,
            Err(e) => {
                errors.push(Diagnostic::from_toml(path, text, &e));
                continue;
            }
        };
        for (name, items) in &file.lists {
            if let Some(first) = list_origin.get(name.get_ref()) {
                errors.push(Diagnostic::at(
                    path,
                    text,
                    name.span().start,
                    format!(
                        "list `{}` is already defined in {}",
                        name.get_ref(),
                        first.display()
                    ),
                ));
                continue;
            }
            list_origin.insert(name.get_ref().clone(), path);
            lists.insert(name.get_ref().clone(), items.clone());
        }
        if file.rule.is_empty() && file.lists.is_empty() {
            errors.push(Diagnostic::file(
                path,
                "this file has no [[rule]] and no [lists]; is it a rule file?",
            ));
        }
        files.push((path.as_path(), text.as_str(), file));
    }
    ParsedFiles { lists, files }
}

/// Checks one `[[rule]]` whole and builds it, or `None` when anything is wrong
/// (every problem reported).
fn load_rule(
    raw: RawRule,
    config: &Config,
    lists: &BTreeMap<String, Vec<String>>,
    report: &mut Report,
) -> Option<Rule> {
    let id = raw.id.get_ref().trim().to_string();
    let feed_config = rule_feed(&raw, config, report);
    let kind = parse_kind(&raw, config, lists, report);
    let when = condition(&raw.when, lists, report);
    let severity = match &raw.severity {
        None => Severity::Warning,
        Some(s) => Severity::choose(s.get_ref()).unwrap_or_else(|message| {
            report.at(s.span().start, message);
            Severity::Warning
        }),
    };
    let notify = known_partners(&raw.notify, config, report);
    let review = known_partners(&raw.review, config, report);
    if notify.is_empty() && review.is_empty() {
        report.at(
            raw.id.span().start,
            format!("rule `{id}` has nobody to tell: add `notify = [\"partner-id\", ...]`"),
        );
    }
    let cooldown = raw.cooldown.as_ref().and_then(|c| {
        parse_duration(c.get_ref())
            .map_err(|message| report.at(c.span().start, message))
            .ok()
    });
    let max_alerts = max_alerts(&raw, report);
    let (approvals, review_within) = review_keys(&raw, !review.is_empty(), report);
    let ack_within = raw.ack_within.as_ref().and_then(|w| {
        if config.web.is_none() {
            report.at(
                w.span().start,
                "`ack_within` needs acknowledgement links, which need the console: set `[web] public_url` in the config",
            );
        }
        parse_duration(w.get_ref())
            .map_err(|message| report.at(w.span().start, message))
            .ok()
    });
    if let (Some(fc), Some(when)) = (feed_config, &when) {
        check_rule_fields(&raw, fc, when, report);
    }
    if let Some(kind) = &kind {
        check_until_fields(&raw, kind, config, report);
    }
    if let Some(fc) = feed_config {
        let until_feed = raw
            .until
            .as_ref()
            .and_then(|u| config.feed(u.get_ref().feed.get_ref()));
        refuse_sensitive_uses(&raw, fc, until_feed, report);
    }
    check_templates(&raw, report);
    let (kind, when) = (kind?, when?);
    Some(Rule {
        name: raw.name.unwrap_or_else(|| id.clone()),
        id,
        description: raw.description,
        feed: raw.feed.into_inner(),
        kind,
        when,
        when_source: raw.when.map(|w| w.into_inner()),
        severity,
        notify,
        review,
        approvals,
        review_within,
        ack_within,
        advice: raw.advice,
        cooldown,
        max_alerts,
        merge: raw.merge.map(|m| m.into_inner()),
        group_by: raw.group_by.into_iter().map(|g| g.into_inner()).collect(),
        subject: raw.subject.map(|s| s.into_inner()),
        body: raw.body.map(|s| s.into_inner()),
        district_field: feed_config
            .map(|f| f.district_field.clone())
            .unwrap_or_else(|| "district".into()),
        source: report.path.to_path_buf(),
    })
}

/// The first rule of a merge group, which every later one must agree with.
struct MergeGroup {
    rule_id: String,
    feed: String,
    review: Vec<String>,
}

/// A rule's `merge` group is an identifier, and its rules share the feed and
/// the `review` list: a merged alert is one draft to one panel, about one
/// feed's records. `at` is where the group's name starts.
fn check_merge_group(
    rule: &Rule,
    at: usize,
    groups: &mut HashMap<String, MergeGroup>,
    report: &mut Report,
) {
    let Some(name) = &rule.merge else {
        return;
    };
    let is_identifier = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !is_identifier {
        report.at(
            at,
            format!("`merge` must name a group: letters, digits, `-` and `_`, starting with a letter (not `{name}`)"),
        );
        return;
    }
    let Some(first) = groups.get(name) else {
        groups.insert(
            name.clone(),
            MergeGroup {
                rule_id: rule.id.clone(),
                feed: rule.feed.clone(),
                review: rule.review.clone(),
            },
        );
        return;
    };
    if first.feed != rule.feed {
        report.at(
            at,
            format!(
                "merge group `{name}` has rules of two feeds: `{}` reads `{}`, this rule `{}`; the rules of a group must share the feed",
                first.rule_id, first.feed, rule.feed
            ),
        );
    } else if sorted(&first.review) != sorted(&rule.review) {
        report.at(
            at,
            format!(
                "merge group `{name}`: rule `{}` has review = {:?}, this rule {:?}; the rules of a group must share the `review` list (their merged alert is one draft)",
                first.rule_id, first.review, rule.review
            ),
        );
    }
}

fn sorted(ids: &[String]) -> Vec<&str> {
    let mut ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// A rule's id is there and used once in the whole set (`ids`: each id's file).
fn check_id(raw: &RawRule, ids: &mut HashMap<String, PathBuf>, report: &mut Report) {
    let at = raw.id.span().start;
    let id = raw.id.get_ref().trim().to_string();
    if id.is_empty() {
        report.at(at, "a rule needs an `id`");
    }
    if let Some(other) = ids.insert(id.clone(), report.path.to_path_buf()) {
        let place = if other == report.path {
            "earlier in this file".to_string()
        } else {
            format!("also in {}", other.display())
        };
        report.at(
            at,
            format!("rule id `{id}` is used twice ({place}); each rule needs its own id"),
        );
    }
}

/// The config of the rule's feed, if the config has that feed.
fn rule_feed<'c>(raw: &RawRule, config: &'c Config, report: &mut Report) -> Option<&'c FeedConfig> {
    let feed = raw.feed.get_ref();
    let found = config.feed(feed);
    if found.is_none() {
        let names = config.feeds.iter().map(|f| f.name.as_str());
        let hint = match suggest(feed, names.clone()) {
            Some(s) => format!("did you mean `{s}`?"),
            None => format!("the feeds are: {}", names.collect::<Vec<_>>().join(", ")),
        };
        report.at(
            raw.feed.span().start,
            format!("unknown feed `{feed}`; {hint}"),
        );
    }
    found
}

/// `notify` or `review`: partner ids, each one the config defines.
fn known_partners(list: &[Spanned<String>], config: &Config, report: &mut Report) -> Vec<String> {
    for p in list {
        if config.partner(p.get_ref()).is_none() {
            report.at(
                p.span().start,
                unknown_partner_message(p.get_ref(), &config.partners),
            );
        }
    }
    list.iter().map(|p| p.get_ref().clone()).collect()
}

fn max_alerts(raw: &RawRule, report: &mut Report) -> u64 {
    match &raw.max_alerts {
        None => DEFAULT_MAX_ALERTS,
        Some(m) if *m.get_ref() < 1 => {
            report.at(
                m.span().start,
                format!(
                    "`max_alerts` must be a whole number of at least 1 (how many alerts one file may raise; default {DEFAULT_MAX_ALERTS})"
                ),
            );
            DEFAULT_MAX_ALERTS
        }
        Some(m) => *m.get_ref() as u64,
    }
}

/// `approvals` and `review_within`, which only mean something with a `review` list.
fn review_keys(raw: &RawRule, reviewed: bool, report: &mut Report) -> (u32, Option<Duration>) {
    let approvals = match &raw.approvals {
        None => 1,
        Some(a) if !(1..=i64::from(MAX_APPROVALS)).contains(a.get_ref()) => {
            report.at(
                a.span().start,
                format!("`approvals` must be a whole number from 1 to {MAX_APPROVALS} (how many different reviewers must approve; default 1)"),
            );
            1
        }
        Some(a) => {
            if *a.get_ref() > 1 && !reviewed {
                report.at(
                    a.span().start,
                    "`approvals` needs reviewers: add `review = [\"partner-id\", ...]`",
                );
            }
            *a.get_ref() as u32
        }
    };
    let review_within = raw.review_within.as_ref().and_then(|w| {
        if !reviewed {
            report.at(
                w.span().start,
                "`review_within` needs reviewers: add `review = [\"partner-id\", ...]`",
            );
        }
        parse_duration(w.get_ref())
            .map_err(|message| report.at(w.span().start, message))
            .ok()
    });
    (approvals, review_within)
}

/// The most `approvals` a rule may ask for: a panel is a handful of people.
pub const MAX_APPROVALS: u32 = 5;

/// The message for a field a feed that declares its columns does not have.
fn no_such_field(name: &str, columns: &[String], feed: &str) -> Option<String> {
    if columns.iter().any(|c| c == name) {
        return None;
    }
    let hint = suggest(name, columns.iter().map(String::as_str))
        .map(|s| format!("; did you mean `{s}`?"))
        .unwrap_or_default();
    Some(format!("feed {feed} has no field `{name}`{hint}"))
}

/// Where the rule's feed declares its columns, every field the rule reads must be one.
fn check_rule_fields(raw: &RawRule, feed: &FeedConfig, when: &Condition, report: &mut Report) {
    let Some(columns) = &feed.fields else { return };
    let feed_name = format!("`{}`", feed.name);
    let check = |name: &str, offset: usize, report: &mut Report| {
        if let Some(message) = no_such_field(name, columns, &feed_name) {
            report.at(offset, message);
        }
    };
    if let Some(w) = &raw.when {
        let base = report.string_at(w.span().start);
        let mut seen = std::collections::HashSet::new();
        for field in when.fields() {
            if !seen.insert(field) {
                continue;
            }
            let offset = condition::field_offset(w.get_ref(), field)
                .map(|i| base + i)
                .unwrap_or(base);
            check(field, offset, report);
        }
    }
    for g in &raw.group_by {
        check(g.get_ref(), g.span().start, report);
    }
    for f in [&raw.key, &raw.field].into_iter().flatten() {
        check(f.get_ref(), f.span().start, report);
    }
}

/// A deadline's closing records come from `until.feed`: its key and condition must fit that feed.
fn check_until_fields(raw: &RawRule, kind: &RuleKind, config: &Config, report: &mut Report) {
    let (
        RuleKind::Deadline {
            key,
            until_feed,
            until_when,
            ..
        },
        Some(u),
    ) = (kind, &raw.until)
    else {
        return;
    };
    let Some(columns) = config.feed(until_feed).and_then(|f| f.fields.as_ref()) else {
        return;
    };
    let u = u.get_ref();
    let feed_name = format!("`{until_feed}` (of `until`)");
    let check = |name: &str, offset: usize, report: &mut Report| {
        if let Some(message) = no_such_field(name, columns, &feed_name) {
            report.at(offset, message);
        }
    };
    check(key, u.feed.span().start, report);
    if let Some(w) = &u.when {
        let base = report.string_at(w.span().start);
        for field in until_when.fields() {
            let offset = condition::field_offset(w.get_ref(), field)
                .map(|i| base + i)
                .unwrap_or(base);
            check(field, offset, report);
        }
    }
}

/// `subject` and `body` are valid templates.
fn check_templates(raw: &RawRule, report: &mut Report) {
    for (label, template) in [("subject", &raw.subject), ("body", &raw.body)] {
        if let Some(t) = template
            && let Err(e) = crate::alerts::render::check_template(t.get_ref())
        {
            let offset = report.string_at(t.span().start) + e.offset;
            report.at(offset, format!("in `{label}`: {}", e.message));
        }
    }
}

/// Expands the config's rule globs into a sorted, de-duplicated file list.
pub fn rule_files(config: &Config) -> Result<Vec<PathBuf>, Diagnostics> {
    let mut files = Vec::new();
    for pattern in &config.daemon.rules {
        let paths = glob::glob(pattern).map_err(|e| {
            Diagnostic::file(&config.path, format!("bad rules pattern `{pattern}`: {e}"))
        })?;
        for entry in paths {
            match entry {
                Ok(p) if p.is_file() => files.push(p),
                Ok(_) => {}
                Err(e) => {
                    return Err(
                        Diagnostic::file(e.path(), format!("cannot read: {}", e.error())).into(),
                    );
                }
            }
        }
    }
    files.sort();
    files.dedup();
    if files.is_empty() {
        return Err(Diagnostic::file(
            &config.path,
            format!("no rule files match {}", config.daemon.rules.join(", ")),
        )
        .into());
    }
    Ok(files)
}

/// Byte offset where a TOML string's content starts, given the offset of its opening quote.
fn string_content_offset(text: &str, quote_at: usize) -> usize {
    let rest = text.get(quote_at..).unwrap_or("");
    if rest.starts_with("'''") || rest.starts_with("\"\"\"") {
        // A newline right after the opening delimiter is not part of the string.
        let after = &rest[3..];
        let skip = if after.starts_with("\r\n") {
            2
        } else if after.starts_with('\n') {
            1
        } else {
            0
        };
        quote_at + 3 + skip
    } else {
        quote_at + 1
    }
}

/// Whether a path names a rule file in `set` (used by the reload watcher).
pub fn is_rule_file(set: &RuleSet, path: &Path) -> bool {
    set.files.iter().any(|f| f == path)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRuleFile {
    #[serde(default)]
    lists: BTreeMap<Spanned<String>, Vec<String>>,
    #[serde(default)]
    rule: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: Spanned<String>,
    name: Option<String>,
    description: Option<String>,
    feed: Spanned<String>,
    kind: Option<Spanned<String>>,
    when: Option<Spanned<String>>,
    severity: Option<Spanned<String>>,
    #[serde(default)]
    notify: Vec<Spanned<String>>,
    #[serde(default)]
    review: Vec<Spanned<String>>,
    approvals: Option<Spanned<i64>>,
    review_within: Option<Spanned<String>>,
    ack_within: Option<Spanned<String>>,
    advice: Option<String>,
    cooldown: Option<Spanned<String>>,
    max_alerts: Option<Spanned<i64>>,
    merge: Option<Spanned<String>>,
    #[serde(default)]
    group_by: Vec<Spanned<String>>,
    subject: Option<Spanned<String>>,
    body: Option<Spanned<String>>,
    count: Option<Spanned<i64>>,
    within: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
    until: Option<Spanned<RawUntil>>,
    notify_on_open: Option<Spanned<BoolOrList>>,
    notify_on_close: Option<Spanned<BoolOrList>>,
    field: Option<Spanned<String>>,
    known: Option<Spanned<Vec<String>>>,
    factor: Option<Spanned<f64>>,
    baseline: Option<Spanned<String>>,
    min_count: Option<Spanned<u32>>,
    #[serde(rename = "for")]
    silent_for: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUntil {
    feed: Spanned<String>,
    when: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "true, false, or a list of partner ids like [\"viable-support\"]"
)]
enum BoolOrList {
    Bool(bool),
    List(Vec<String>),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse(
            Path::new("/x/earlywarn.toml"),
            r#"
[mail]
transport = "file"
[[feed]]
name = "drug_testing"
dir = "in"
fields = ["sample_id", "district", "substances_major", "notes"]
[[partner]]
id = "dews-panel"
emails = ["p@example.org"]
"#,
        )
        .unwrap()
    }

    fn load(text: &str) -> Result<RuleSet, Diagnostics> {
        RuleSet::from_sources(&config(), &[(PathBuf::from("r.toml"), text.to_string())])
    }

    #[test]
    fn a_good_rule_loads() {
        let set = load(
            r#"
[lists]
nitazenes = ["isotonitazene"]

[[rule]]
id = "nitazene"
feed = "drug_testing"
when = 'substances_major in nitazenes'
severity = "critical"
notify = ["dews-panel"]
cooldown = "6h"
group_by = ["district"]
"#,
        )
        .unwrap();
        let rule = &set.rules[0];
        assert_eq!(rule.severity, Severity::Critical);
        assert_eq!(rule.cooldown, Some(Duration::from_secs(21600)));
        assert_eq!(rule.group_by, ["district"]);
    }

    #[test]
    fn errors_point_into_the_condition() {
        let err = load(
            "[[rule]]\nid = \"x\"\nfeed = \"drug_testing\"\nnotify = [\"dews-panel\"]\nwhen = 'district == \"a\" and substances_major in nitazene'\n",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "r.toml:5:49: unknown list `nitazene`; define it under [lists] in a rule file (lists are shared by all rule files)"
        );
    }

    #[test]
    fn unknown_names_get_suggestions() {
        let err = load("[[rule]]\nid = \"x\"\nfeed = \"drug-testing\"\nnotify = [\"dews_panel\"]\ngroup_by = [\"distrct\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("r.toml:3:8: unknown feed `drug-testing`; did you mean `drug_testing`?"),
            "{err}"
        );
        assert!(
            err.contains("r.toml:4:11: unknown partner `dews_panel`; did you mean `dews-panel`?"),
            "{err}"
        );
        let err = load("[[rule]]\nid = \"x\"\nfeed = \"drug_testing\"\nnotify = [\"dews-panel\"]\ngroup_by = [\"distrct\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "r.toml:5:13: feed `drug_testing` has no field `distrct`; did you mean `district`?"
            ),
            "{err}"
        );
    }

    #[test]
    fn sensitive_fields_are_refused_where_every_partner_would_see_them() {
        let config = Config::parse(
            Path::new("/x/earlywarn.toml"),
            "[mail]\ntransport = \"file\"\n[[feed]]\nname = \"drug_testing\"\ndir = \"in\"\nsensitive = [\"notes\"]\n[[feed]]\nname = \"incidents\"\ndir = \"inc\"\nsensitive = [\"Location\", \"subject_key\"]\n[[partner]]\nid = \"p\"\nemails = [\"p@example.org\"]\n",
        )
        .unwrap();
        let load = |rule: &str| {
            RuleSet::from_sources(
                &config,
                &[(
                    PathBuf::from("r.toml"),
                    format!("[[rule]]\nid = \"x\"\nnotify = [\"p\"]\n{rule}"),
                )],
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
        };
        let cases = [
            (
                "feed = \"drug_testing\"\ngroup_by = [\"district\", \"Notes\"]",
                "r.toml:5:25: `Notes` is sensitive in feed `drug_testing`: a `group_by` value",
            ),
            (
                "feed = \"drug_testing\"\nkind = \"first_seen\"\nfield = \"notes\"",
                "r.toml:6:9: `notes` is sensitive in feed `drug_testing`: a first_seen rule",
            ),
            (
                "feed = \"incidents\"\nkind = \"deadline\"\nkey = \"location\"\nuntil = { feed = \"incidents\" }\nwithin = \"1h\"",
                "r.toml:6:7: `location` is sensitive in feed `incidents`: a deadline's key",
            ),
            (
                "feed = \"drug_testing\"\nkind = \"deadline\"\nkey = \"subject_key\"\nuntil = { feed = \"incidents\" }\nwithin = \"1h\"",
                "r.toml:6:7: `subject_key` is sensitive in feed `incidents`: a deadline's key",
            ),
            (
                "feed = \"drug_testing\"\nsubject = \"{{ rule.name }}: {{ events[0]['NOTES'] }}\"",
                "r.toml:5:43: `NOTES` is sensitive in feed `drug_testing`: a value in the subject",
            ),
            (
                "feed = \"drug_testing\"\nsubject = '{% for e in events %}{{ e.no_tes }}{% endfor %}'",
                "r.toml:5:38: `no_tes` is sensitive in feed `drug_testing`: a value in the subject",
            ),
        ];
        for (rule, expected) in cases {
            let err = load(rule).unwrap_err();
            assert!(err.starts_with(expected), "{rule}:\n{err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
        for fine in [
            "feed = \"drug_testing\"\nbody = \"{{ event.notes }}\"\nsubject = \"{{ rule.name }} in {{ district }}\"",
            "feed = \"drug_testing\"\nsubject = \"{{ partner.notes }} {{ event.notes2 }}\"",
        ] {
            assert_eq!(load(fine), Ok(()), "{fine}");
        }
    }

    #[test]
    fn one_bad_rule_refuses_the_whole_set() {
        let err = load(
            "[[rule]]\nid = \"good\"\nfeed = \"drug_testing\"\nnotify = [\"dews-panel\"]\n\n[[rule]]\nid = \"bad\"\nfeed = \"drug_testing\"\nnotify = [\"dews-panel\"]\nseverity = \"urgent\"\n",
        )
        .unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert_eq!(err.0[0].line, 10);
    }

    #[test]
    fn max_alerts_defaults_to_100_and_must_be_a_positive_whole_number() {
        let rule = "[[rule]]\nid = \"x\"\nfeed = \"drug_testing\"\nnotify = [\"dews-panel\"]\n";
        assert_eq!(load(rule).unwrap().rules[0].max_alerts, 100);
        assert_eq!(
            load(&format!("{rule}max_alerts = 5\n")).unwrap().rules[0].max_alerts,
            5
        );
        let err = load(&format!("{rule}max_alerts = 0\n"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "r.toml:5:14: `max_alerts` must be a whole number of at least 1 (how many alerts one file may raise; default 100)"
        );
        for bad in ["-3", "2.5", "\"10\""] {
            let err = load(&format!("{rule}max_alerts = {bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("r.toml:5:"), "{bad}: {err}");
        }
    }

    #[test]
    fn ack_within_is_a_duration_placed_when_wrong() {
        let rule = "[[rule]]\nid = \"x\"\nfeed = \"drug_testing\"\nnotify = [\"dews-panel\"]\n";
        let mut with_web = config();
        with_web.web = Some(crate::config::WebConfig {
            listen: "127.0.0.1:8080".parse().unwrap(),
            public_url: "https://ew.example.org".into(),
            tls: None,
            session_idle: Duration::from_secs(3600),
            max_connections: 8,
        });
        let load_with_web = |text: &str| {
            RuleSet::from_sources(&with_web, &[(PathBuf::from("r.toml"), text.to_string())])
        };
        let loaded = load_with_web(&format!("{rule}ack_within = \"2h\"\n")).unwrap();
        assert_eq!(loaded.rules[0].ack_within, Some(Duration::from_secs(7200)));
        assert_eq!(load_with_web(rule).unwrap().rules[0].ack_within, None);
        let err = load_with_web(&format!("{rule}ack_within = \"soon\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("r.toml:5:14: "), "{err}");
        // Without the console there is no link to confirm with.
        let err = load(&format!("{rule}ack_within = \"2h\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("r.toml:5:14: `ack_within` needs acknowledgement links"),
            "{err}"
        );
    }

    #[test]
    fn approvals_and_review_within_need_reviewers_and_sane_values() {
        let rule = "[[rule]]\nid = \"x\"\nfeed = \"drug_testing\"\nnotify = [\"dews-panel\"]\n";
        let reviewed = format!("{rule}review = [\"dews-panel\"]\n");
        let loaded = load(&reviewed).unwrap();
        assert_eq!(loaded.rules[0].approvals, 1);
        assert_eq!(loaded.rules[0].review_within, None);
        let loaded = load(&format!(
            "{reviewed}approvals = 2\nreview_within = \"4h\"\n"
        ))
        .unwrap();
        assert_eq!(loaded.rules[0].approvals, 2);
        assert_eq!(
            loaded.rules[0].review_within,
            Some(Duration::from_secs(4 * 3600))
        );
        let err = load(&format!("{reviewed}approvals = 6\n"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "r.toml:6:13: `approvals` must be a whole number from 1 to 5 (how many different reviewers must approve; default 1)"
        );
        let err = load(&format!("{rule}approvals = 2\n"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "r.toml:5:13: `approvals` needs reviewers: add `review = [\"partner-id\", ...]`"
        );
        let err = load(&format!("{rule}review_within = \"4h\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("r.toml:5:17: `review_within` needs reviewers"),
            "{err}"
        );
        let err = load(&format!("{reviewed}review_within = \"soon\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("r.toml:6:17: "), "{err}");
    }

    #[test]
    fn unknown_keys_and_kinds_are_reported() {
        let err = load("[[rule]]\nid = \"x\"\nfeed = \"drug_testing\"\nnotify = [\"dews-panel\"]\nkind = \"treshold\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("did you mean `threshold`?"), "{err}");
        let err = load("[[rule]]\nid = \"x\"\nfeed = \"drug_testing\"\nnotify = [\"dews-panel\"]\nsevrity = \"info\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("r.toml:5:1: unknown key `sevrity`; did you mean `severity`?"),
            "{err}"
        );
    }
}
