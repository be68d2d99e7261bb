//! What one instance learns or is told that the others must apply too (key health findings,
//! operator actions, revocations): published on one channel, and, for what stays true a while,
//! kept under `{prefix}state:{subject}` (expiring with it) so an instance that starts or
//! reconnects catches up before it takes the next message. Published in the background; what
//! Redis cannot take now is retried for a while. With `cluster.secret` every event is signed
//! ([`super::envelope`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;

use serde::{Deserialize, Serialize};

use super::Link;
use super::envelope::{Opener, Source};
use super::seal::Sealer;
use crate::pool::PoolEvent;

/// One thing the other instances must apply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ClusterEvent {
    Pool(PoolEvent),
    /// An operator disabled, enabled or reset a key.
    KeyState {
        key_id: String,
        action: KeyAction,
    },
    /// An operator added a key: the key's config, sealed with the cluster's secret for its id.
    KeyAdded {
        key_id: String,
        sealed: String,
    },
    /// An operator removed a key (calls in flight on it finish).
    KeyRemoved {
        key_id: String,
    },
    /// An operator applied a weight preset (`None`: back to the schedule).
    Preset {
        name: Option<String>,
    },
    Revoked {
        jti: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyAction {
    Disable,
    Enable,
    Reset,
}

/// How long an unpublished event is retried.
const RETRY_FOR: Duration = Duration::from_secs(600);
const QUEUE: usize = 10_000;

/// One event to publish: `subject` names the state it leaves behind (a newer event about the
/// same subject replaces it), `expires` when that state stops mattering (unix seconds).
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub event: Value,
    pub subject: Option<String>,
    pub expires: Option<u64>,
}

/// The publishing side; cheap to clone.
#[derive(Clone)]
pub struct Bus {
    tx: tokio::sync::mpsc::Sender<(Instant, Outgoing)>,
}

impl Bus {
    /// Queues an event; never blocks (a full queue drops it, with a warning).
    pub fn publish(&self, out: Outgoing) {
        if self.tx.try_send((Instant::now(), out)).is_err() {
            tracing::warn!(target: "gemini_proxy::cluster", "cluster event queue full: event dropped");
        }
    }
}

/// Starts publishing and listening. `apply` gets every event another instance published (and, at
/// each (re)connection, the state they left), on the link's runtime.
pub fn start(
    link: &Arc<Link>,
    signer: Option<Arc<Sealer>>,
    apply: impl Fn(Value) + Send + Sync + 'static,
) -> Bus {
    let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
    link.spawn(publish_loop(link.clone(), signer.clone(), rx));
    let opener = Opener::new(link.instance_id.clone(), signer);
    link.spawn(listen_loop(Arc::downgrade(link), opener, Arc::new(apply)));
    Bus { tx }
}

async fn publish_loop(
    link: Arc<Link>,
    signer: Option<Arc<Sealer>>,
    mut rx: tokio::sync::mpsc::Receiver<(Instant, Outgoing)>,
) {
    let mut waiting: VecDeque<(Instant, Outgoing)> = VecDeque::new();
    let mut retry = tokio::time::interval(Duration::from_secs(1));
    loop {
        let batch: Vec<(Instant, Outgoing)> = tokio::select! {
            m = rx.recv() => match m { Some(m) => vec![m], None => return },
            _ = retry.tick() => {
                waiting.retain(|(at, _)| at.elapsed() < RETRY_FOR);
                waiting.drain(..).collect()
            }
        };
        for (at, out) in batch {
            if publish_one(&link, signer.as_deref(), &out).await.is_err() {
                if waiting.len() >= QUEUE {
                    waiting.pop_front();
                }
                waiting.push_back((at, out));
            }
        }
    }
}

async fn publish_one(
    link: &Link,
    signer: Option<&Sealer>,
    out: &Outgoing,
) -> Result<(), super::LinkError> {
    let subject = out.subject.as_deref();
    let envelope = super::envelope::seal(&link.instance_id, signer, subject, &out.event);
    let channel = link.key("events");
    let state = out
        .subject
        .as_ref()
        .map(|s| (link.key(&format!("state:{s}")), out.expires));
    link.run(Some(Duration::from_secs(1)), move |mut c| async move {
        let mut p = redis::pipe();
        if let Some((key, expires)) = state {
            let set = p.cmd("SET").arg(&key).arg(&envelope);
            if let Some(at) = expires {
                set.arg("EXAT").arg(at);
            }
            set.ignore();
        }
        p.cmd("PUBLISH").arg(&channel).arg(&envelope).ignore();
        p.query_async::<()>(&mut c).await
    })
    .await
}

async fn listen_loop(
    link: std::sync::Weak<Link>,
    mut opener: Opener,
    apply: Arc<dyn Fn(Value) + Send + Sync>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(l) = link.upgrade() else { return };
        let (client, channel) = (l.client.clone(), l.key("events"));
        drop(l);
        let sub = tokio::time::timeout(Duration::from_secs(2), async {
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(ps)
        })
        .await;
        if let Ok(Ok(ps)) = sub {
            backoff = Duration::from_millis(100);
            if let Some(l) = link.upgrade() {
                catch_up(&l, &mut opener, &*apply).await;
            }
            let mut messages = ps.into_on_message();
            while let Some(msg) = messages.next().await {
                if let Ok(text) = msg.get_payload::<String>()
                    && let Some(event) = opener.open(&text, Source::Channel)
                {
                    apply(event);
                }
            }
            tracing::debug!(target: "gemini_proxy::cluster", "cluster event stream ended; reconnecting");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Applies the state other instances left (on every (re)connection).
async fn catch_up(link: &Link, opener: &mut Opener, apply: &(dyn Fn(Value) + Send + Sync)) {
    let state = link.key("state:");
    let pattern = format!("{state}*");
    let found = link
        .run(Some(Duration::from_secs(2)), move |mut c| async move {
            let mut out: Vec<(String, String)> = Vec::new();
            let mut cursor: u64 = 0;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(500)
                    .query_async(&mut c)
                    .await?;
                if !keys.is_empty() {
                    let vals: Vec<Option<String>> =
                        redis::cmd("MGET").arg(&keys).query_async(&mut c).await?;
                    let found = keys.into_iter().zip(vals);
                    out.extend(found.filter_map(|(k, v)| Some((k, v?))));
                }
                if next == 0 || out.len() > 100_000 {
                    return Ok(out);
                }
                cursor = next;
            }
        })
        .await;
    match found {
        Ok(list) => {
            for (key, text) in list {
                let subject = key.strip_prefix(&state).unwrap_or_default();
                if let Some(event) = opener.open(&text, Source::State(subject)) {
                    apply(event);
                }
            }
        }
        Err(e) => {
            tracing::warn!(target: "gemini_proxy::cluster", error = %e, "cannot read the cluster's state; catching up at the next connection")
        }
    }
}
