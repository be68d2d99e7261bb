//! An event as it crosses Redis. With `cluster.secret`, each is signed together with who sent
//! it, when and the state subject it belongs to; what does not verify is dropped, so a writer
//! to Redis who does not know the secret can neither forge an event nor replay one on the
//! channel (messages older than [`FRESH_FOR`], or seen before, are not applied), nor move a
//! state entry to another subject. Without the secret events are taken as they come.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Value, json};

use super::seal::Sealer;
use crate::util::clock::unix_millis;

/// How far a published event's time may be from the receiver's (ms): delivery takes ms, and
/// instances' clocks are kept within a fraction of this.
pub const FRESH_FOR: u64 = 120_000;

/// Most signatures remembered against replay (events are rare: findings and operator acts).
const SEEN: usize = 50_000;

/// The text one instance publishes for `event` about `subject`.
pub fn seal(from: &str, signer: Option<&Sealer>, subject: Option<&str>, event: &Value) -> String {
    let Some(signer) = signer else {
        return json!({"from": from, "event": event}).to_string();
    };
    let (at, subject, body) = (unix_millis(), subject.unwrap_or(""), event.to_string());
    let mac = signer.sign(&signed_text(from, at, subject, &body));
    json!({"from": from, "at": at, "subject": subject, "body": body, "mac": mac}).to_string()
}

fn signed_text(from: &str, at: u64, subject: &str, body: &str) -> String {
    format!("{from}\n{at}\n{subject}\n{body}")
}

/// The event of a kept state entry of `subject` (read outside the listener, e.g. a pin looked
/// up on a call's path), on the same terms as [`Opener::open`].
pub fn open_state(me: &str, signer: Option<&Sealer>, text: &str, subject: &str) -> Option<Value> {
    read(text, me, signer, Some(subject)).map(|(event, _)| event)
}

/// The event in an envelope not from `me`, and its time and signature when signed; `None`
/// when it is malformed, or (with a signer) unsigned, forged, or read as state of a subject
/// other than the one it was signed for.
fn read(
    text: &str,
    me: &str,
    signer: Option<&Sealer>,
    subject: Option<&str>,
) -> Option<(Value, Option<(u64, String)>)> {
    let mut v: Value = serde_json::from_str(text).ok()?;
    if v["from"].as_str() == Some(me) {
        return None;
    }
    let Some(signer) = signer else {
        return v["event"].is_object().then(|| (v["event"].take(), None));
    };
    let (from, at, signed_subject, body, mac) = (
        v["from"].as_str()?,
        v["at"].as_u64()?,
        v["subject"].as_str()?,
        v["body"].as_str()?,
        v["mac"].as_str()?,
    );
    if !signer.verify(&signed_text(from, at, signed_subject, body), mac)
        || subject.is_some_and(|s| s != signed_subject)
    {
        return None;
    }
    let event = serde_json::from_str::<Value>(body)
        .ok()
        .filter(Value::is_object)?;
    Some((event, Some((at, mac.to_string()))))
}

/// Where an envelope was read: the channel, or the state entry of a subject.
#[derive(Clone, Copy)]
pub enum Source<'a> {
    Channel,
    State(&'a str),
}

/// Opens what others published; remembers signatures it applied, against replay.
pub struct Opener {
    me: String,
    signer: Option<Arc<Sealer>>,
    seen: HashMap<String, u64>,
}

impl Opener {
    pub fn new(me: String, signer: Option<Arc<Sealer>>) -> Opener {
        Opener {
            me,
            signer,
            seen: HashMap::new(),
        }
    }

    /// The event in `text`, unless this instance sent it, or it is malformed, unsigned, forged,
    /// stale or a replay (when the cluster has a secret).
    pub fn open(&mut self, text: &str, source: Source) -> Option<Value> {
        let subject = match source {
            Source::State(subject) => Some(subject),
            Source::Channel => None,
        };
        let (event, signed) = read(text, &self.me, self.signer.as_deref(), subject)?;
        if let (Source::Channel, Some((at, mac))) = (source, signed)
            && (unix_millis().abs_diff(at) > FRESH_FOR || !self.first_time(&mac, at))
        {
            return None;
        }
        Some(event)
    }

    fn first_time(&mut self, mac: &str, at: u64) -> bool {
        if self.seen.len() >= SEEN {
            let now = unix_millis();
            self.seen.retain(|_, t| now.abs_diff(*t) <= FRESH_FOR);
            if self.seen.len() >= SEEN {
                self.seen.clear();
            }
        }
        self.seen.insert(mac.to_string(), at).is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "cluster-envelope-secret-0123456789abcdef";

    fn opener(me: &str, secret: Option<&str>) -> Opener {
        Opener::new(me.into(), secret.map(|s| Arc::new(Sealer::new(s))))
    }

    #[test]
    fn a_signed_event_opens_once_on_the_channel_and_only_under_its_subject() {
        let signer = Sealer::new(SECRET);
        let event = json!({"kind": "preset", "name": "night"});
        let text = seal("a", Some(&signer), Some("preset"), &event);
        let mut b = opener("b", Some(SECRET));
        assert_eq!(b.open(&text, Source::Channel), Some(event.clone()));
        assert_eq!(b.open(&text, Source::Channel), None, "a replay");
        assert_eq!(b.open(&text, Source::State("preset")), Some(event));
        assert_eq!(b.open(&text, Source::State("pool:dead:k1")), None);
        assert_eq!(opener("a", Some(SECRET)).open(&text, Source::Channel), None);
    }

    #[test]
    fn forged_altered_stale_or_unsigned_events_are_dropped() {
        let mut b = opener("b", Some(SECRET));
        let event = json!({"kind": "key_removed", "key_id": "k1"});
        let unsigned = seal("a", None, None, &event);
        assert_eq!(b.open(&unsigned, Source::Channel), None);
        let other = seal(
            "a",
            Some(&Sealer::new("another-secret-0123456789abcdef-xyz")),
            None,
            &event,
        );
        assert_eq!(b.open(&other, Source::Channel), None);
        let good: Value =
            serde_json::from_str(&seal("a", Some(&Sealer::new(SECRET)), None, &event)).unwrap();
        for (field, value) in [
            (
                "body",
                json!("{\"kind\":\"key_removed\",\"key_id\":\"k2\"}"),
            ),
            ("from", json!("c")),
            ("at", json!(good["at"].as_u64().unwrap() + 1)),
            ("subject", json!("preset")),
        ] {
            let mut altered = good.clone();
            altered[field] = value;
            assert_eq!(
                b.open(&altered.to_string(), Source::Channel),
                None,
                "{field}"
            );
        }
        let signer = Sealer::new(SECRET);
        let at = unix_millis() - FRESH_FOR - 1000;
        let body = event.to_string();
        let mac = signer.sign(&signed_text("a", at, "", &body));
        let stale = json!({"from": "a", "at": at, "subject": "", "body": body, "mac": mac});
        assert_eq!(b.open(&stale.to_string(), Source::Channel), None);
        // Without a secret, events are taken as they come.
        assert_eq!(
            opener("b", None).open(&unsigned, Source::Channel),
            Some(event)
        );
    }
}
