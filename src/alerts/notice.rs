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

    /// The paragraphs of the body, in plain text.
    fn paragraphs(&self) -> Vec<String> {
        match self {
            NoticeKind::Update { n, text } => vec![format!("Update {n} to this alert:"), text.to_string()],
            NoticeKind::Withdrawn { reason } => vec![
                "This alert has been WITHDRAWN: disregard it.".into(),
                format!("Reason: {reason}"),
            ],
            NoticeKind::ReviewReminder => vec![
                "This draft is still awaiting assessment: it has not been approved or dismissed within the time the rule allows. Its reviewers have been sent a reminder.".into(),
            ],
            NoticeKind::SilentPartners { partners } => vec![
                "These partners have not confirmed receipt of this alert within the time the rule allows; each has been sent a reminder:".into(),
                partners.iter().map(|p| format!("- {p}")).collect::<Vec<_>>().join("\n"),
            ],
        }
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
    let mut paragraphs = notice.kind.paragraphs();
    paragraphs.push(format!("Original email: {}", notice.original_subject));
    if let Some(link) = notice.ack_link {
        paragraphs.push(format!("Confirm you have received this: {link}"));
    }
    paragraphs.push(format!("Reference: {}", notice.alert_id));
    let text = format!("{}\n", paragraphs.join("\n\n"));
    let html = html_of(&paragraphs, notice.ack_link);

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

fn html_of(paragraphs: &[String], ack_link: Option<&str>) -> String {
    let mut html = String::from(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"></head><body>",
    );
    for p in paragraphs {
        match ack_link {
            Some(link) if p.ends_with(link) && p.starts_with("Confirm") => {
                html.push_str(&ack_line_html(link));
            }
            _ => {
                html.push_str("<p style=\"white-space: pre-wrap\">");
                html.push_str(&html_escape(p));
                html.push_str("</p>");
            }
        }
    }
    html.push_str("</body></html>");
    html
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
}
