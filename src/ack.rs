//! Acknowledgement tokens (SPEC §10): a link in each alert email lets the
//! partner confirm receipt. The token names one alert and one partner and
//! expires [`ACK_VALIDITY`] after it was made; it is signed with HMAC-SHA-256
//! under a 32-byte key made once at random and kept in the database (`meta`),
//! and checked in constant time. A changed, expired or foreign token (signed
//! under another key) is refused, and says nothing about why beyond that.
//!
//! Pure: the key and `now` come from the caller. Nothing here records an
//! acknowledgement; the web page's POST does, through the store.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use jiff::{SignedDuration, Timestamp};
use sha2::Sha256;

/// How long an acknowledgement link works.
pub const ACK_VALIDITY: SignedDuration = SignedDuration::from_hours(30 * 24);

/// The longest name a person may type beside the button.
pub const MAX_ACK_NAME_CHARS: usize = 100;

/// Separates the token's fields inside the signed payload: neither an alert
/// id nor a partner id (config identifiers) can hold it.
const FIELD: char = '\u{1f}';

/// What a valid token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckClaim {
    pub alert_id: String,
    pub partner_id: String,
    pub expires: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    /// Not a token, altered, or signed under another key: one answer for
    /// all, so a forger learns nothing from the refusal.
    #[error("this confirmation link is not valid")]
    Invalid,
    #[error("this confirmation link has expired")]
    Expired,
    /// The POST did not carry the form token of a page shown for this link within a day.
    #[error("this confirmation form is out of date; open the link again and press the button")]
    StaleForm,
    #[error("the name {0}")]
    BadName(&'static str),
}

/// The signed token for `alert_id` and `partner_id`, valid until `now` + [`ACK_VALIDITY`].
pub fn token(key: &[u8; 32], alert_id: &str, partner_id: &str, now: Timestamp) -> String {
    let expires = now.saturating_add(ACK_VALIDITY).unwrap_or(now).as_second();
    let payload = format!("{alert_id}{FIELD}{partner_id}{FIELD}{expires}");
    let tag = mac(key, payload.as_bytes()).finalize().into_bytes();
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(payload.as_bytes()),
        URL_SAFE_NO_PAD.encode(tag)
    )
}

/// The link an email carries: `PUBLIC_URL/ack/TOKEN`.
pub fn link(public_url: &str, token: &str) -> String {
    format!("{public_url}/ack/{token}")
}

/// What `token` names, if it was signed under `key` and has not expired at `now`.
pub fn verify(key: &[u8; 32], token: &str, now: Timestamp) -> Result<AckClaim, AckError> {
    // Bounded before any decoding: a token is a little over 100 characters.
    if token.len() > 1024 {
        return Err(AckError::Invalid);
    }
    let (payload, tag) = token.split_once('.').ok_or(AckError::Invalid)?;
    let payload = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| AckError::Invalid)?;
    let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| AckError::Invalid)?;
    if tag.len() != 32 {
        return Err(AckError::Invalid);
    }
    // verify_slice compares in constant time.
    mac(key, &payload)
        .verify_slice(&tag)
        .map_err(|_| AckError::Invalid)?;
    let payload = String::from_utf8(payload).map_err(|_| AckError::Invalid)?;
    let mut fields = payload.split(FIELD);
    let (Some(alert_id), Some(partner_id), Some(expires), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(AckError::Invalid);
    };
    let expires = expires
        .parse::<i64>()
        .ok()
        .and_then(|s| Timestamp::from_second(s).ok())
        .ok_or(AckError::Invalid)?;
    if now >= expires {
        return Err(AckError::Expired);
    }
    Ok(AckClaim {
        alert_id: alert_id.to_string(),
        partner_id: partner_id.to_string(),
        expires,
    })
}

/// How long the form of an acknowledgement page may be sent after the page was shown.
pub const FORM_VALIDITY: SignedDuration = SignedDuration::from_hours(24);

/// What the form token's MAC covers besides the link's token: its own label,
/// so no form token is ever a valid link token or the other way round.
const FORM_LABEL: &str = "ack-form";

/// The form token of the page that `ack_token`'s link opens, issued at `now`
/// (the GET). The POST must carry it: tied to that one link and that page
/// view, so a scanner that POSTs to the link without reading the page
/// records nothing.
pub fn form_token(key: &[u8; 32], ack_token: &str, now: Timestamp) -> String {
    let issued = now.as_second();
    let tag = mac(key, form_payload(ack_token, issued).as_bytes())
        .finalize()
        .into_bytes();
    format!("{issued}.{}", URL_SAFE_NO_PAD.encode(tag))
}

/// Whether `form` is the form token of `ack_token`'s page, shown no more
/// than [`FORM_VALIDITY`] before `now` (checked in constant time).
pub fn verify_form_token(key: &[u8; 32], ack_token: &str, form: &str, now: Timestamp) -> bool {
    let Some((issued, tag)) = form.split_once('.') else {
        return false;
    };
    let (Ok(issued_secs), Ok(tag)) = (issued.parse::<i64>(), URL_SAFE_NO_PAD.decode(tag)) else {
        return false;
    };
    let Ok(issued) = Timestamp::from_second(issued_secs) else {
        return false;
    };
    let fresh = issued <= now && now < issued.saturating_add(FORM_VALIDITY).unwrap_or(issued);
    fresh
        && mac(key, form_payload(ack_token, issued_secs).as_bytes())
            .verify_slice(&tag)
            .is_ok()
}

fn form_payload(ack_token: &str, issued: i64) -> String {
    format!("{FORM_LABEL}{FIELD}{ack_token}{FIELD}{issued}")
}

/// The name typed beside the button: trimmed, empty means none, bounded, no controls.
pub fn valid_name(name: Option<&str>) -> Result<Option<String>, AckError> {
    let Some(name) = name.map(str::trim).filter(|n| !n.is_empty()) else {
        return Ok(None);
    };
    if name.chars().count() > MAX_ACK_NAME_CHARS {
        return Err(AckError::BadName("is longer than 100 characters"));
    }
    if crate::display::contains_controls(name) {
        return Err(AckError::BadName("holds control characters"));
    }
    Ok(Some(name.to_string()))
}

fn mac(key: &[u8; 32], data: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length: a 32-byte one cannot be refused.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of every length"));
    mac.update(data);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];

    fn now() -> Timestamp {
        "2026-12-01T10:00:00Z".parse().unwrap()
    }

    #[test]
    fn a_token_names_its_alert_and_partner_until_it_expires() {
        let t = token(&KEY, "EW-1ABC", "bolton", now());
        assert!(t.len() < 120, "{t}");
        assert!(
            t.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
            "URL-safe: {t}"
        );
        let claim = verify(&KEY, &t, now()).unwrap();
        assert_eq!(claim.alert_id, "EW-1ABC");
        assert_eq!(claim.partner_id, "bolton");
        assert_eq!(claim.expires, now() + ACK_VALIDITY);
        let day_29 = now() + SignedDuration::from_hours(29 * 24);
        assert!(verify(&KEY, &t, day_29).is_ok());
        assert_eq!(
            verify(&KEY, &t, now() + ACK_VALIDITY),
            Err(AckError::Expired)
        );
    }

    #[test]
    fn tampered_and_foreign_tokens_are_refused() {
        let t = token(&KEY, "EW-1ABC", "charity", now());
        // Another partner's name in the payload, the tag kept.
        let (_, tag) = t.split_once('.').unwrap();
        let forged_payload =
            URL_SAFE_NO_PAD.encode(format!("EW-1ABC{FIELD}bolton{FIELD}9999999999"));
        assert_eq!(
            verify(&KEY, &format!("{forged_payload}.{tag}"), now()),
            Err(AckError::Invalid)
        );
        // One character changed anywhere.
        for i in [0, t.len() / 2, t.len() - 1] {
            let mut bytes = t.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let changed = String::from_utf8(bytes).unwrap();
            assert!(verify(&KEY, &changed, now()).is_err(), "{changed}");
        }
        // Signed under another database's key.
        let foreign = token(&[8; 32], "EW-1ABC", "charity", now());
        assert_eq!(verify(&KEY, &foreign, now()), Err(AckError::Invalid));
        for junk in ["", ".", "abc", "a.b", &"A".repeat(5000)] {
            assert_eq!(verify(&KEY, junk, now()), Err(AckError::Invalid), "{junk}");
        }
    }

    #[test]
    fn a_form_token_belongs_to_one_link_and_one_day() {
        let link = token(&KEY, "EW-1ABC", "bolton", now());
        let other = token(&KEY, "EW-1ABC", "charity", now());
        let form = form_token(&KEY, &link, now());
        assert!(verify_form_token(&KEY, &link, &form, now()));
        assert!(verify_form_token(
            &KEY,
            &link,
            &form,
            now() + SignedDuration::from_hours(23)
        ));
        assert!(
            !verify_form_token(&KEY, &link, &form, now() + FORM_VALIDITY),
            "expired"
        );
        assert!(
            !verify_form_token(&KEY, &link, &form, now() - SignedDuration::from_secs(1)),
            "from the future"
        );
        assert!(
            !verify_form_token(&KEY, &other, &form, now()),
            "another link's page"
        );
        assert!(
            !verify_form_token(&[8; 32], &link, &form, now()),
            "another key"
        );
        let (issued, tag) = form.split_once('.').unwrap();
        let later = format!("{}.{tag}", issued.parse::<i64>().unwrap() + 3600);
        assert!(
            !verify_form_token(&KEY, &link, &later, now() + SignedDuration::from_hours(2)),
            "its time changed"
        );
        for junk in ["", ".", "x.y", "1.", &link] {
            assert!(!verify_form_token(&KEY, &link, junk, now()), "{junk}");
        }
        // Neither kind of token passes for the other.
        assert_eq!(verify(&KEY, &form, now()), Err(AckError::Invalid));
    }

    #[test]
    fn the_name_is_optional_bounded_and_plain() {
        assert_eq!(valid_name(None), Ok(None));
        assert_eq!(valid_name(Some("  ")), Ok(None));
        assert_eq!(valid_name(Some(" J Smith ")), Ok(Some("J Smith".into())));
        assert!(valid_name(Some(&"x".repeat(101))).is_err());
        assert!(valid_name(Some("J\x1b[31mSmith")).is_err());
        assert!(valid_name(Some("J\nSmith")).is_err());
    }
}
