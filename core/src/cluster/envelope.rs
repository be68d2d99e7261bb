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
        let mut v: Value = serde_json::from_str(text).ok()?;
        if v["from"].as_str() == Some(self.me.as_str()) {
            return None;
        }
        let Some(signer) = self.signer.clone() else {
            return v["event"].is_object().then(|| v["event"].take());
        };
        let (from, at, subject, body, mac) = (
            v["from"].as_str()?,
            v["at"].as_u64()?,
            v["subject"].as_str()?,
            v["body"].as_str()?,
            v["mac"].as_str()?,
        );
        if !signer.verify(&signed_text(from, at, subject, body), mac) {
            return None;
        }
        match source {
            Source::State(expected) if subject != expected => return None,
            Source::State(_) => {}
            Source::Channel => {
                if unix_millis().abs_diff(at) > FRESH_FOR || !self.first_time(mac, at) {
                    return None;
                }
            }
        }
        serde_json::from_str::<Value>(body)
            .ok()
            .filter(Value::is_object)
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
