//! Self-alerts: telling the `[daemon] ops` partners about the daemon's own trouble.
//!
//! Problems (a refused rule reload, a permanent delivery failure, a rejected
//! file or rows, an unreadable feed folder) are reported from wherever they
//! happen into an [`OpsNotifier`]. The daemon collects them at most once per
//! `ops_interval` into one email through the same outbox as every alert, so a
//! flood of bad files is one email, not hundreds. Building that email is pure.
//!
//! Ops partners are partners: text that may quote a file's contents
//! ([`Problem::quoted`]) reaches only those with the ISA (SPEC §5.3).

use crate::alerts::render::{RenderedEmail, Templates};
use crate::alerts::{Alert, AlertStatus, Audience, Delivery, Trigger};
use crate::config::{Config, Severity};
use crate::event::{Event, Value};
use crate::rules::condition::Condition;
use crate::rules::{Rule, RuleKind};
use jiff::Timestamp;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The pseudo rule id of self-alerts (`X-Earlywarn-Rule`).
pub const OPS_RULE_ID: &str = "earlywarn-ops";

/// Self-alert ids start with this, so a failure to deliver one is not reported again (no loop).
pub const OPS_ALERT_PREFIX: &str = "OPS-";

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    ReloadRefused,
    DeliveryFailed,
    FileRejected,
    RowsRejected,
    FeedUnreadable,
    AlertReachesNobody,
}

impl ProblemKind {
    /// The problem in a few words, for one problem of the email.
    fn describe(self) -> &'static str {
        match self {
            ProblemKind::ReloadRefused => "rule reload refused (the previous rules stay in force)",
            ProblemKind::DeliveryFailed => "email refused permanently by the mail server",
            ProblemKind::FileRejected => "file rejected",
            ProblemKind::RowsRejected => "rows rejected",
            ProblemKind::FeedUnreadable => "feed folder cannot be read",
            ProblemKind::AlertReachesNobody => {
                "alert reaches nobody (no partner on the rule's list covers it)"
            }
        }
    }

    /// What `n` problems of this kind are, for the subject
    /// ("1 file rejected in drug_testing"); `feeds` are the feeds they are in.
    fn headline(self, n: usize, feeds: &[String]) -> String {
        let s = if n == 1 { "" } else { "s" };
        let of_feeds = if feeds.is_empty() {
            String::new()
        } else {
            format!(" in {}", feeds.join(", "))
        };
        match self {
            ProblemKind::ReloadRefused => "new rules refused".into(),
            ProblemKind::DeliveryFailed => {
                format!("{n} email{s} refused for good by the mail server")
            }
            ProblemKind::FileRejected => format!("{n} file{s} rejected{of_feeds}"),
            ProblemKind::RowsRejected => format!("rows rejected in {n} file{s}{of_feeds}"),
            ProblemKind::FeedUnreadable => format!("feed folder cannot be read{of_feeds}"),
            ProblemKind::AlertReachesNobody => format!("{n} alert{s} reached nobody"),
        }
    }

    /// The same problem, once it has gone away.
    fn cleared(self) -> &'static str {
        match self {
            ProblemKind::ReloadRefused => "rules reloaded: the refused rules were fixed",
            ProblemKind::FeedUnreadable => "feed folder readable again",
            ProblemKind::DeliveryFailed => "the mail server accepts emails again",
            ProblemKind::FileRejected | ProblemKind::RowsRejected => "files accepted again",
            ProblemKind::AlertReachesNobody => "alerts reach partners again",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Problem {
    pub kind: ProblemKind,
    /// What happened and where: the daemon's own words, file and feed names.
    pub detail: String,
    /// Text that may quote a file's contents (a rejected file's reason can show its
    /// header line, which in a file without one is its first record): withheld
    /// from ops partners without the ISA, like any record's sensitive fields.
    pub quoted: Option<String>,
    pub at: Timestamp,
    /// This is not a problem but the news that one of its kind has gone away.
    pub cleared: bool,
}

impl Problem {
    /// The feed a problem is in. The daemon writes a file's problems as
    /// `FEED/FILE...` and a folder's as `FEED ...`: feed names have neither.
    fn feed(&self, config: &Config) -> Option<String> {
        let first = self.detail.split(['/', ' ', ':']).next()?;
        config.feed(first).map(|f| f.name.clone())
    }
}

/// The field of a self-alert record that holds [`Problem::quoted`].
const QUOTED_FIELD: &str = "from the file";

/// At most this many problems are listed in one email; the rest are counted.
const MAX_LISTED: usize = 50;

#[derive(Debug, Default)]
struct State {
    problems: Vec<Problem>,
    /// Problems beyond MAX_LISTED since the last email.
    more: u64,
    last_sent: Option<Instant>,
}

/// Collects problems from every part of the daemon.
#[derive(Debug, Default)]
pub struct OpsNotifier {
    state: Mutex<State>,
}

impl OpsNotifier {
    pub fn report(&self, kind: ProblemKind, detail: impl Into<String>, at: Timestamp) {
        self.push(kind, detail.into(), None, at, false);
    }

    /// Reports that a problem reported earlier has gone away (a refused rule
    /// set fixed, a feed folder readable again), so ops are not left worrying.
    pub fn cleared(&self, kind: ProblemKind, detail: impl Into<String>, at: Timestamp) {
        self.push(kind, detail.into(), None, at, true);
    }

    /// Reports a problem whose `quoted` part may hold a file's contents (see [`Problem::quoted`]).
    pub fn report_quoting(
        &self,
        kind: ProblemKind,
        detail: impl Into<String>,
        quoted: impl Into<String>,
        at: Timestamp,
    ) {
        self.push(kind, detail.into(), Some(quoted.into()), at, false);
    }

    fn push(
        &self,
        kind: ProblemKind,
        detail: String,
        quoted: Option<String>,
        at: Timestamp,
        cleared: bool,
    ) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.problems.len() < MAX_LISTED {
            s.problems.push(Problem {
                kind,
                detail,
                quoted,
                at,
                cleared,
            });
        } else {
            s.more += 1;
        }
    }

    /// The problems to email now, if any, and if the last email was at least `interval` ago.
    pub fn take_due(&self, now: Instant, interval: Duration) -> Option<(Vec<Problem>, u64)> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.problems.is_empty() {
            return None;
        }
        if s.last_sent
            .is_some_and(|t| now.duration_since(t) < interval)
        {
            return None;
        }
        s.last_sent = Some(now);
        let more = std::mem::take(&mut s.more);
        Some((std::mem::take(&mut s.problems), more))
    }
}

/// The subject of a self-alert after its marking: the problem named
/// ("earlywarn: 1 file rejected in drug_testing"), and whether it has
/// since cleared.
fn subject(config: &Config, problems: &[Problem], more: u64) -> String {
    let mut kinds: Vec<ProblemKind> = Vec::new();
    for p in problems.iter().filter(|p| !p.cleared) {
        if !kinds.contains(&p.kind) {
            kinds.push(p.kind);
        }
    }
    let of_kind = |kind: ProblemKind| -> (usize, Vec<String>) {
        let of: Vec<&Problem> = problems
            .iter()
            .filter(|p| p.kind == kind && !p.cleared)
            .collect();
        let mut feeds: Vec<String> = of.iter().filter_map(|p| p.feed(config)).collect();
        feeds.sort();
        feeds.dedup();
        (of.len(), feeds)
    };
    // Cleared after it was reported, within this one email.
    let since_cleared = |kind: ProblemKind| {
        let last_report = problems
            .iter()
            .filter(|p| p.kind == kind && !p.cleared)
            .map(|p| p.at)
            .max();
        problems
            .iter()
            .any(|p| p.kind == kind && p.cleared && Some(p.at) >= last_report)
    };
    if kinds.is_empty() {
        let cleared: Vec<&str> = problems.iter().map(|p| p.kind.cleared()).collect();
        return format!("earlywarn: cleared: {}", cleared.join("; "));
    }
    // Two kinds are named; more are counted.
    let named: Vec<String> = kinds
        .iter()
        .take(2)
        .map(|&kind| {
            let (n, feeds) = of_kind(kind);
            let cleared = if since_cleared(kind) {
                " (since cleared)"
            } else {
                ""
            };
            format!("{}{cleared}", kind.headline(n, &feeds))
        })
        .collect();
    let mut subject = format!("earlywarn: {}", named.join("; "));
    let others = kinds.len().saturating_sub(2) as u64 + more;
    if others > 0 {
        subject.push_str(&format!(
            "; and {others} more problem{}",
            if others == 1 { "" } else { "s" }
        ));
    }
    subject
}

/// The email's lead: how many problems, and what has cleared since.
fn lead(problems: &[Problem], more: u64) -> String {
    let open = problems.iter().filter(|p| !p.cleared).count() as u64 + more;
    let cleared: Vec<&Problem> = problems.iter().filter(|p| p.cleared).collect();
    let mut lead = match open {
        0 => String::from("A problem earlywarn reported earlier has gone away."),
        1 => String::from("earlywarn has a problem that needs someone to look at it."),
        n => format!("earlywarn has {n} problems that need someone to look at them."),
    };
    if open > 0 && !cleared.is_empty() {
        lead.push_str(" Some have cleared since: see below.");
    }
    lead
}

/// The rule that self-alerts are rendered as: its name is the subject and
/// its description the lead, so the email says what is wrong.
pub fn ops_rule(config: &Config) -> Rule {
    Rule {
        id: OPS_RULE_ID.into(),
        name: "earlywarn needs attention".into(),
        description: Some("The daemon's own trouble, for the people who run it.".into()),
        feed: String::new(),
        kind: RuleKind::Match,
        when: Condition::Always,
        when_source: None,
        severity: Severity::Warning,
        notify: config.daemon.ops.clone(),
        review: Vec::new(),
        approvals: 1,
        review_within: None,
        ack_within: None,
        advice: Some(
            "Look at `earlywarn status` and the daemon's log (journalctl -u earlywarn). Rejected files and their reasons are in each feed's rejected/ folder; fix and drop them again. A refused rule set: run `earlywarn check`.".into(),
        ),
        cooldown: None,
        max_alerts: crate::rules::DEFAULT_MAX_ALERTS,
        merge: None,
        group_by: Vec::new(),
        subject: None,
        body: None,
        district_field: "district".into(),
        source: PathBuf::new(),
    }
}

/// Builds the self-alert for `problems` and renders it for each ops partner.
pub fn build(
    config: &Config,
    problems: &[Problem],
    more: u64,
    now: Timestamp,
) -> Option<(Alert, Vec<(String, RenderedEmail)>)> {
    if problems.is_empty() || config.daemon.ops.is_empty() {
        return None;
    }
    let mut rule = ops_rule(config);
    rule.name = subject(config, problems, more);
    rule.description = Some(lead(problems, more));
    let events: Vec<Event> = problems
        .iter()
        .map(|p| Event {
            feed: "earlywarn".into(),
            record_id: None,
            time: p.at,
            fields: {
                let mut fields = crate::event::Fields::from([
                    (
                        "problem",
                        Value::Text(if p.cleared {
                            format!("cleared: {}", p.kind.cleared()).into()
                        } else {
                            p.kind.describe().into()
                        }),
                    ),
                    ("detail", Value::Text(p.detail.as_str().into())),
                ]);
                if let Some(quoted) = &p.quoted {
                    fields.insert(QUOTED_FIELD, Value::Text(quoted.as_str().into()));
                }
                fields
            },
        })
        .collect();
    let mut h = Sha256::new();
    h.update(now.as_millisecond().to_le_bytes());
    for p in problems {
        h.update(p.detail.as_bytes());
    }
    let id = format!(
        "{OPS_ALERT_PREFIX}{}",
        &hex::encode(h.finalize())[..10].to_uppercase()
    );
    let alert = Alert {
        id,
        rule_id: OPS_RULE_ID.into(),
        group: BTreeMap::new(),
        district: None,
        severity: Severity::Warning,
        created_at: now,
        event_count: problems.len() as u64 + more,
        suppressed_before: 0,
        events: events.clone(),
        status: AlertStatus::Sent,
        trigger: Trigger::Match,
        assessment: None,
        reasons: Vec::new(),
    };
    let mut deliveries = Vec::new();
    for id in &config.daemon.ops {
        let Some(partner) = config.partner(id) else {
            continue;
        };
        // The daemon's own words go to every ops partner; what a file said only
        // to those with the ISA, as a record's sensitive fields would.
        let mut withheld = std::collections::BTreeSet::new();
        let mut events = events.clone();
        if !partner.isa {
            for e in &mut events {
                if e.fields.remove(QUOTED_FIELD).is_some() {
                    withheld.insert(QUOTED_FIELD.to_string());
                }
            }
        }
        deliveries.push(Delivery {
            partner,
            audience: Audience::Notify,
            events,
            count: alert.event_count,
            withheld,
            group: BTreeMap::new(),
            district: None,
            reasons: Vec::new(),
            trigger: Trigger::Match,
        });
    }
    // A self-alert starts no thread, and its rule has only the default templates.
    let emails = crate::pipeline::infallible(crate::pipeline::render_deliveries(
        config,
        &alert,
        &rule,
        Templates::defaults(),
        &deliveries,
        |_, _| Ok(None),
    ));
    let emails = emails
        .into_iter()
        .map(|o| (o.partner_id, o.email))
        .collect();
    Some((alert, emails))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn a_flood_of_problems_is_one_email_per_interval() {
        let ops = OpsNotifier::default();
        let t0 = Instant::now();
        let minute = Duration::from_secs(60);
        assert!(ops.take_due(t0, minute).is_none());
        ops.report(
            ProblemKind::FileRejected,
            "a.csv: empty",
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(
            ops.take_due(t0, minute).unwrap().0.len(),
            1,
            "the first problem goes at once"
        );
        for i in 0..200 {
            ops.report(
                ProblemKind::FileRejected,
                format!("{i}.csv"),
                Timestamp::UNIX_EPOCH,
            );
        }
        assert!(ops.take_due(t0 + Duration::from_secs(30), minute).is_none());
        let (listed, more) = ops.take_due(t0 + minute, minute).unwrap();
        assert_eq!((listed.len(), more), (MAX_LISTED, 150));
    }

    #[test]
    fn the_email_goes_to_ops_partners() {
        let config = Config::parse(
            Path::new("/x/c.toml"),
            "[daemon]\nops = [\"ops\"]\n[mail]\ntransport = \"file\"\n[[feed]]\nname = \"f\"\ndir = \"in\"\n[[partner]]\nid = \"ops\"\nemails = [\"ops@example.org\"]\ndistricts = [\"Bolton\"]\n",
        )
        .unwrap();
        let problems = [Problem {
            kind: ProblemKind::ReloadRefused,
            detail: "rules/x.toml:3:8: unknown feed".into(),
            quoted: None,
            at: Timestamp::UNIX_EPOCH,
            cleared: false,
        }];
        let (alert, emails) = build(&config, &problems, 0, Timestamp::UNIX_EPOCH).unwrap();
        assert!(alert.id.starts_with(OPS_ALERT_PREFIX));
        assert_eq!(
            emails.len(),
            1,
            "ops partners get it whatever districts they cover"
        );
        assert!(emails[0].1.text.contains("rules/x.toml:3:8: unknown feed"));
        assert_eq!(
            emails[0].1.subject,
            "OFFICIAL-SENSITIVE [WARNING] earlywarn: new rules refused"
        );
        let text = &emails[0].1.text;
        assert!(!text.contains("District:"), "{text}");
        assert!(!text.contains("matching record"), "{text}");
    }

    #[test]
    fn the_subject_names_the_problem_and_says_when_it_cleared() {
        let config = Config::parse(
            Path::new("/x/c.toml"),
            "[daemon]\nops = [\"ops\"]\n[mail]\ntransport = \"file\"\n[[feed]]\nname = \"drug_testing\"\ndir = \"in\"\n[[feed]]\nname = \"incidents\"\ndir = \"inc\"\n[[partner]]\nid = \"ops\"\nemails = [\"ops@example.org\"]\n",
        )
        .unwrap();
        let at = |s: i64| Timestamp::from_second(s).unwrap();
        let problem = |kind, detail: &str, t: i64, cleared| Problem {
            kind,
            detail: detail.into(),
            quoted: None,
            at: at(t),
            cleared,
        };
        let subject = |problems: &[Problem], more| {
            let (_, emails) = build(&config, problems, more, at(100)).unwrap();
            emails[0].1.subject.clone()
        };
        let rejected = |feed: &str, t| {
            problem(
                ProblemKind::FileRejected,
                &format!("{feed}/a.csv"),
                t,
                false,
            )
        };
        assert_eq!(
            subject(&[rejected("drug_testing", 1)], 0),
            "OFFICIAL-SENSITIVE [WARNING] earlywarn: 1 file rejected in drug_testing"
        );
        assert_eq!(
            subject(
                &[
                    rejected("drug_testing", 1),
                    rejected("incidents", 2),
                    rejected("drug_testing", 3)
                ],
                4
            ),
            "OFFICIAL-SENSITIVE [WARNING] earlywarn: 3 files rejected in drug_testing, incidents; and 4 more problems"
        );
        let refused = problem(ProblemKind::ReloadRefused, "r.toml:1:1: x", 5, false);
        let fixed = problem(ProblemKind::ReloadRefused, "24 rules in force", 6, true);
        assert_eq!(
            subject(&[refused.clone(), fixed.clone()], 0),
            "OFFICIAL-SENSITIVE [WARNING] earlywarn: new rules refused (since cleared)"
        );
        let (_, emails) = build(&config, std::slice::from_ref(&fixed), 0, at(100)).unwrap();
        assert_eq!(
            emails[0].1.subject,
            "OFFICIAL-SENSITIVE [WARNING] earlywarn: cleared: rules reloaded: the refused rules were fixed"
        );
        assert!(
            emails[0]
                .1
                .text
                .contains("A problem earlywarn reported earlier has gone away."),
            "{}",
            emails[0].1.text
        );
        // Refused again after the fix: not cleared.
        let again = problem(ProblemKind::ReloadRefused, "r.toml:2:1: y", 7, false);
        assert_eq!(
            subject(&[refused, fixed, again], 0),
            "OFFICIAL-SENSITIVE [WARNING] earlywarn: new rules refused"
        );
    }

    /// A file without a header line: its first record is echoed as the "header"
    /// in the rejection reason. Ops partners without the ISA must not get it.
    #[test]
    fn what_a_file_said_reaches_only_ops_partners_with_the_isa() {
        let config = Config::parse(
            Path::new("/x/c.toml"),
            "[daemon]\nops = [\"ops\", \"it\"]\n[mail]\ntransport = \"file\"\n[[feed]]\nname = \"f\"\ndir = \"in\"\n[[partner]]\nid = \"ops\"\nemails = [\"ops@example.org\"]\nisa = true\n[[partner]]\nid = \"it\"\nemails = [\"it@example.org\"]\n",
        )
        .unwrap();
        let problems = [Problem {
            kind: ProblemKind::FileRejected,
            detail: "f/headerless.csv".into(),
            quoted: Some(
                "the header has no `sample_id` column: S1 | Bolton | 12 Market St ZZSECRET".into(),
            ),
            at: Timestamp::UNIX_EPOCH,
            cleared: false,
        }];
        let (_, emails) = build(&config, &problems, 0, Timestamp::UNIX_EPOCH).unwrap();
        let by_partner: BTreeMap<&str, &RenderedEmail> =
            emails.iter().map(|(p, e)| (p.as_str(), e)).collect();
        let ops = by_partner["ops"];
        assert!(ops.text.contains("ZZSECRET"), "{}", ops.text);
        let it = by_partner["it"];
        let raw = String::from_utf8_lossy(&it.bytes);
        for (part, text) in [
            ("text", &it.text),
            ("html", &it.html),
            ("raw", &raw.to_string()),
        ] {
            assert!(!text.contains("ZZSECRET"), "{part}:\n{text}");
        }
        assert!(it.text.contains("f/headerless.csv"), "{}", it.text);
        assert!(it.text.contains("Withheld: from the file"), "{}", it.text);
    }
}
