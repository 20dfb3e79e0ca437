//! The emails that follow an alert (SPEC §10): updates, withdrawals and
//! reminders, each to one partner, threaded under the first email that
//! partner got about the alert.
//!
//! Pure: the caller (`lifecycle`) hands in what the partner already received
//! (its subject, its addresses, the Message-ID to reply to) and the time; no
//! value reaches a notice that the partner's own first email did not carry,
//! so a notice is redacted exactly as the original was. Nothing here reads
//! the database or the clock.

use super::render::{Purpose, RenderError, RenderedEmail, html_escape, message_id};
use crate::config::Config;
use lettre::message::Mailbox;

impl Purpose {
    /// How the outbox names the purpose (`outbox.purpose`): `alert`, `draft`,
    /// `update-N`, `reminder-N`, `withdrawn`.
    pub fn key(self) -> String {
        match self {
            Purpose::Alert => "alert".into(),
            Purpose::Draft => "draft".into(),
            Purpose::Update(n) => format!("update-{n}"),
            Purpose::Reminder(n) => format!("reminder-{n}"),
            Purpose::Withdrawn => "withdrawn".into(),
        }
    }
}

/// What a notice says, beyond the original email it follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoticeKind<'a> {
    /// `UPDATE N: <subject>`, with the update's text.
    Update { n: u32, text: &'a str },
    /// `WITHDRAWN: <subject>`, with the reason.
    Withdrawn { reason: &'a str },
    /// A reminder of a draft still undecided after `review_within`.
    ReviewReminder,
    /// `ops` told which partners have not confirmed receipt.
    SilentPartners { partners: &'a [String] },
}

impl NoticeKind<'_> {
    pub fn purpose(&self) -> Purpose {
        match self {
            NoticeKind::Update { n, .. } => Purpose::Update(*n),
            NoticeKind::Withdrawn { .. } => Purpose::Withdrawn,
            // Each kind of reminder goes once per alert and partner. Their own
            // numbers keep their Message-IDs and outbox rows apart when one
            // partner is a reviewer, a recipient and `ops` at once: 1 the
            // review reminder, 2 the alert again to a silent partner
            // (`lifecycle`), 3 the note to `ops` about silent partners.
            NoticeKind::ReviewReminder => Purpose::Reminder(1),
            NoticeKind::SilentPartners { .. } => Purpose::Reminder(3),
        }
    }

    fn subject_prefix(&self) -> String {
        match self {
            NoticeKind::Update { n, .. } => format!("UPDATE {n}: "),
            NoticeKind::Withdrawn { .. } => "WITHDRAWN: ".into(),
            NoticeKind::ReviewReminder | NoticeKind::SilentPartners { .. } => "REMINDER: ".into(),
        }
    }

    /// The badge above the heading (text, background, foreground): the
    /// kind at a glance, in colour and in words.
    fn badge(&self) -> (String, &'static str, &'static str) {
        match self {
            NoticeKind::Update { n, .. } => (format!("UPDATE {n}"), "#1f5fa8", "#ffffff"),
            NoticeKind::Withdrawn { .. } => ("WITHDRAWN".into(), "#b00020", "#ffffff"),
            NoticeKind::ReviewReminder | NoticeKind::SilentPartners { .. } => {
                ("REMINDER".into(), "#f2b705", "#1a1a1a")
            }
        }
    }

    /// The first line: what happened to the alert whose headline is `headline`, in words.
    fn heading(&self, headline: &str) -> String {
        match self {
            NoticeKind::Update { n, .. } => format!("Update {n}: {headline}"),
            NoticeKind::Withdrawn { .. } => format!("Withdrawn: {headline}"),
            NoticeKind::ReviewReminder => format!("Still awaiting review: {headline}"),
            NoticeKind::SilentPartners { .. } => format!("Receipt not confirmed: {headline}"),
        }
    }

    /// The body after the heading.
    fn blocks(&self) -> Vec<Block> {
        match self {
            NoticeKind::Update { n, text } => vec![
                Block::Typed(text.to_string()),
                Block::Text(format!(
                    "This is update {n} to the alert sent to you earlier under the same reference (in this thread)."
                )),
            ],
            NoticeKind::Withdrawn { reason } => vec![
                Block::Text(
                    "This alert has been withdrawn: disregard it, and do not pass on its advice.".into(),
                ),
                Block::Typed(format!("Reason: {reason}")),
            ],
            NoticeKind::ReviewReminder => vec![Block::Text(
                "This draft is still awaiting assessment: nobody has approved or dismissed it within the time its rule allows. Its reviewers have been sent the draft again as a reminder.".into(),
            )],
            NoticeKind::SilentPartners { partners } => vec![
                Block::Text(
                    "These partners have not confirmed receipt of this alert within the time its rule allows; each has been sent the alert again as a reminder:".into(),
                ),
                Block::List(partners.to_vec()),
            ],
        }
    }
}

/// One part of a notice's body.
enum Block {
    /// Written by earlywarn.
    Text(String),
    /// Typed by a person (an update, a reason): its line breaks are kept.
    Typed(String),
    List(Vec<String>),
}

/// The headline of a subject `render` wrote (`MARKING [TAG] ... headline`):
/// the words after the marking and the bracketed tags; the whole subject
/// when it has another shape.
fn headline_of<'s>(subject: &'s str, marking: &str) -> &'s str {
    let mut rest = subject
        .strip_prefix(marking)
        .unwrap_or(subject)
        .trim_start();
    while let Some(tagged) = rest.strip_prefix('[') {
        match tagged.find("] ") {
            Some(end) => rest = &tagged[end + 2..],
            None => break,
        }
    }
    match rest.trim() {
        "" => subject,
        headline => headline,
    }
}

/// What the notice is about and who gets it.
#[derive(Debug, Clone)]
pub struct Notice<'a> {
    pub alert_id: &'a str,
    pub rule_id: &'a str,
    pub partner_id: &'a str,
    /// The subject of the partner's first email about the alert, as it got it
    /// (already redacted for it); the notice's subject repeats it.
    pub original_subject: &'a str,
    /// The addresses the partner's first email went to.
    pub to: &'a [String],
    /// The Message-ID of that first email: the notice replies to it.
    pub in_reply_to: Option<&'a str>,
    /// The alert's thread (`render::thread_key`), stored with the outbox row.
    pub thread: &'a str,
    /// The acknowledgement link for this partner, when it is to confirm receipt.
    pub ack_link: Option<&'a str>,
    pub kind: NoticeKind<'a>,
}

/// The notice as an email ready for the outbox.
pub fn render(notice: &Notice<'_>, config: &Config) -> Result<RenderedEmail, RenderError> {
    let from: Mailbox = config
        .mail
        .from
        .parse()
        .map_err(|e| RenderError::Build(format!("[mail] from: {e}")))?;
    let purpose = notice.kind.purpose();
    let message_id = message_id(
        notice.alert_id,
        notice.partner_id,
        purpose,
        from.email.domain(),
    );
    let subject = one_line(&format!(
        "{}{}",
        notice.kind.subject_prefix(),
        notice.original_subject
    ));
    let heading = notice
        .kind
        .heading(headline_of(notice.original_subject, &config.mail.marking));
    let blocks = notice.kind.blocks();
    let text = text_of(notice, config, &heading, &blocks);
    let html = html_of(notice, config, &heading, &blocks);

    let (to, bytes) = super::render::assemble(
        &super::render::Envelope {
            from: &from,
            subject: &subject,
            message_id: &message_id,
            date: None,
            alert_id: notice.alert_id,
            rule_id: notice.rule_id,
            severity: None,
            parent: notice.in_reply_to,
            partner_id: notice.partner_id,
            addresses: notice.to,
        },
        config,
        &text,
        &html,
    )?;
    Ok(RenderedEmail {
        subject,
        text,
        html,
        message_id,
        thread: notice.thread.to_string(),
        from: from.email.to_string(),
        to,
        bytes,
    })
}

/// An alert email's text and HTML with the acknowledgement line added at
/// the end (render's hook): after everything the partner must read first.
pub fn with_ack_line(mut text: String, html: String, link: &str) -> (String, String) {
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push('\n');
    text.push_str(&ack_line_text(link));
    text.push('\n');
    let line = ack_line_html(link);
    let html = match html.rfind("</body>") {
        Some(at) => format!("{}{line}{}", &html[..at], &html[at..]),
        None => html + &line,
    };
    (text, html)
}

/// The acknowledgement line of an alert email, in text and HTML.
pub fn ack_line_text(link: &str) -> String {
    format!("Confirm you have received this: {link}")
}

pub fn ack_line_html(link: &str) -> String {
    let link = html_escape(link);
    format!("<p>Confirm you have received this: <a href=\"{link}\">{link}</a></p>")
}

/// The text part, in the order of an alert's: the marking, the heading,
/// the body, the link, the reference, the contact, the marking.
fn text_of(notice: &Notice<'_>, config: &Config, heading: &str, blocks: &[Block]) -> String {
    let marking = &config.mail.marking;
    let mut t = format!("{marking}\n\n{heading}\n\n");
    for block in blocks {
        match block {
            Block::Text(p) | Block::Typed(p) => t.push_str(p),
            Block::List(items) => {
                let lines: Vec<String> = items.iter().map(|i| format!("- {i}")).collect();
                t.push_str(&lines.join("\n"));
            }
        }
        t.push_str("\n\n");
    }
    if let Some(link) = notice.ack_link {
        t.push_str(&format!("{}\n\n", ack_line_text(link)));
    }
    t.push_str(&format!(
        "Reference: {id}\nQuote {id} in any reply.\n",
        id = notice.alert_id
    ));
    if let Some(contact) = &config.mail.contact {
        t.push_str(&format!("\n{contact}\n"));
    }
    t.push_str(&format!("\n{marking}\n"));
    t
}

/// The HTML part: the text part's order, in an alert email's layout.
fn html_of(notice: &Notice<'_>, config: &Config, heading: &str, blocks: &[Block]) -> String {
    let e = html_escape;
    let marking = e(&config.mail.marking);
    let (badge, bg, fg) = notice.kind.badge();
    let mut h = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n</head>\n<body style=\"margin:0;padding:0;background:#f3f3f3\">\n<div style=\"max-width:680px;margin:0 auto;padding:16px;background:#ffffff;font-family:Arial,Helvetica,sans-serif;font-size:16px;line-height:1.5;color:#1a1a1a;overflow-wrap:anywhere\">\n",
    );
    h.push_str(&format!(
        "<p style=\"margin:0 0 12px;font-weight:bold;letter-spacing:0.05em\">{marking}</p>\n"
    ));
    h.push_str(&format!(
        "<p style=\"margin:0 0 8px\"><span style=\"display:inline-block;padding:2px 10px;border-radius:3px;background:{bg};color:{fg};font-weight:bold\">{}</span></p>\n",
        e(&badge)
    ));
    h.push_str(&format!(
        "<h1 style=\"font-size:22px;line-height:1.3;margin:0 0 12px\">{}</h1>\n",
        e(heading)
    ));
    for block in blocks {
        match block {
            Block::Text(p) => h.push_str(&format!("<p>{}</p>\n", e(p))),
            Block::Typed(p) => {
                h.push_str(&format!("<p style=\"white-space:pre-wrap\">{}</p>\n", e(p)))
            }
            Block::List(items) => {
                h.push_str("<ul style=\"padding-left:24px\">\n");
                for item in items {
                    h.push_str(&format!("<li>{}</li>\n", e(item)));
                }
                h.push_str("</ul>\n");
            }
        }
    }
    if let Some(link) = notice.ack_link {
        h.push_str(&ack_line_html(link));
        h.push('\n');
    }
    h.push_str(&format!(
        "<p style=\"font-size:14px;color:#555555\">Reference: {id}<br>Quote {id} in any reply.</p>\n",
        id = e(notice.alert_id)
    ));
    if let Some(contact) = &config.mail.contact {
        h.push_str(&format!(
            "<p style=\"border-top:1px solid #cccccc;padding-top:8px\">{}</p>\n",
            e(contact)
        ));
    }
    h.push_str(&format!(
        "<p style=\"font-weight:bold;letter-spacing:0.05em\">{marking}</p>\n</div>\n</body></html>\n"
    ));
    h
}

/// A header value on one line: untrusted text cannot add a header.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config() -> Config {
        Config::parse(
            Path::new("/x/c.toml"),
            "[mail]\ntransport = \"file\"\nfrom = \"GM Early Warning <earlywarn@example.org>\"\n[[feed]]\nname = \"f\"\ndir = \"in\"\n[[partner]]\nid = \"p\"\nemails = [\"p@example.org\"]\n",
        )
        .unwrap()
    }

    fn notice<'a>(subject: &'a str, kind: NoticeKind<'a>, to: &'a [String]) -> Notice<'a> {
        Notice {
            alert_id: "EW-ABC",
            rule_id: "r",
            partner_id: "p",
            original_subject: subject,
            to,
            in_reply_to: Some("<EW-ABC.p@example.org>"),
            thread: "alert\u{1f}EW-ABC",
            ack_link: None,
            kind,
        }
    }

    #[test]
    fn an_update_replies_to_the_first_email_and_repeats_its_subject() {
        let to = vec!["p@example.org".to_string()];
        let email = render(
            &notice(
                "[OFFICIAL-SENSITIVE] Nitazene in Bolton",
                NoticeKind::Update {
                    n: 2,
                    text: "Lab: <b>10 mg</b>",
                },
                &to,
            ),
            &config(),
        )
        .unwrap();
        assert_eq!(
            email.subject,
            "UPDATE 2: [OFFICIAL-SENSITIVE] Nitazene in Bolton"
        );
        assert_eq!(email.message_id, "<EW-ABC.p.update-2@example.org>");
        let raw = String::from_utf8(email.bytes).unwrap();
        assert!(raw.contains("In-Reply-To: <EW-ABC.p@example.org>"), "{raw}");
        assert!(raw.contains("References: <EW-ABC.p@example.org>"), "{raw}");
        assert!(
            email.text.contains("Lab: <b>10 mg</b>") && email.text.contains("Reference: EW-ABC")
        );
        assert!(
            email.html.contains("Lab: &lt;b&gt;10 mg&lt;/b&gt;"),
            "{}",
            email.html
        );
    }

    #[test]
    fn a_stored_subject_cannot_add_a_header() {
        let to = vec!["p@example.org".to_string()];
        let email = render(
            &notice(
                "Alert\r\nBcc: x@evil.example",
                NoticeKind::Withdrawn { reason: "wrong" },
                &to,
            ),
            &config(),
        )
        .unwrap();
        let raw = String::from_utf8(email.bytes).unwrap();
        let headers = &raw[..raw.find("\r\n\r\n").unwrap()];
        assert!(!headers.lines().any(|l| l.starts_with("Bcc:")), "{headers}");
        assert!(email.subject.starts_with("WITHDRAWN: Alert"));
        assert_eq!(email.message_id, "<EW-ABC.p.withdrawn@example.org>");
    }

    #[test]
    fn the_ack_line_goes_at_the_end_of_both_parts() {
        let (text, html) = with_ack_line(
            "Alert text".into(),
            "<html><body><p>x</p></body></html>".into(),
            "https://ew.example.org/ack/T\"<",
        );
        assert!(
            text.ends_with("\n\nConfirm you have received this: https://ew.example.org/ack/T\"<\n")
        );
        assert!(
            html.ends_with("<p>Confirm you have received this: <a href=\"https://ew.example.org/ack/T&quot;&lt;\">https://ew.example.org/ack/T&quot;&lt;</a></p></body></html>"),
            "{html}"
        );
    }

    #[test]
    fn a_notice_opens_with_what_happened_to_the_alert_in_words() {
        let to = vec!["p@example.org".to_string()];
        let subject =
            "OFFICIAL-SENSITIVE [CRITICAL] Protonitazene in a tablet, Bolton, tested Tue 4 Nov";
        let mut config = config();
        config.mail.marking = "OFFICIAL-SENSITIVE".into();
        let email = render(
            &notice(
                subject,
                NoticeKind::Withdrawn {
                    reason: "wrong sample",
                },
                &to,
            ),
            &config,
        )
        .unwrap();
        assert!(
            email.text.starts_with(
                "OFFICIAL-SENSITIVE\n\nWithdrawn: Protonitazene in a tablet, Bolton, tested Tue 4 Nov\n\n"
            ),
            "{}",
            email.text
        );
        assert!(
            email
                .text
                .ends_with("Quote EW-ABC in any reply.\n\nOFFICIAL-SENSITIVE\n")
        );
        assert_eq!(
            headline_of(
                "OFFICIAL-SENSITIVE [DRAFT FOR ASSESSMENT] [WARNING] New: x",
                "OFFICIAL-SENSITIVE"
            ),
            "New: x"
        );
        assert_eq!(
            headline_of("Something else", "OFFICIAL-SENSITIVE"),
            "Something else"
        );
    }
}
