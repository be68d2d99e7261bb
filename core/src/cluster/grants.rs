//! Admissions granted ahead: while a call's scopes are far from their limits, the script that
//! admits it also counts a few more requests (and tokens) of the same scopes in Redis, in the
//! same second, and hands them to this instance. The next calls of exactly those scopes are
//! admitted from the grant without a round trip. Whatever a grant still holds after
//! [`GRANT_TTL`] goes back to Redis (an adjustment at the grant's second), so the counts come
//! out exact once it has.
//!
//! What it changes: nothing is ever admitted beyond a limit (a grant is counted before it is
//! used), but a call admitted from a grant is counted in the second the grant was made, up to
//! [`GRANT_TTL`] earlier than it ran, and an instance holding a grant it does not use keeps that
//! share from the others for at most [`GRANT_TTL`]. The script makes grants only while a
//! scope's headroom is more than `instances x GRANT_SHARE` grants, so near a limit every call is
//! decided in Redis, one by one. Streams are never granted (their leases are per call).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gemini_proxy_sdk::{LimitAdjust, LimitCall, LimitVerdict};
use parking_lot::Mutex;
use tokio::sync::Notify;

/// How long a grant may be used; then what is left goes back.
pub const GRANT_TTL: Duration = Duration::from_secs(1);
/// A grant is at most 1/(instances x this) of a scope's headroom: all the instances' grants
/// together hold at most 1/32 of it, which is what a burst may find unused for up to
/// [`GRANT_TTL`].
pub const GRANT_SHARE: u64 = 32;
/// Largest grant, in requests.
pub const MAX_GRANT: u64 = 256;
/// Smallest grant: one worth fewer calls saves too few round trips to hold a share for.
/// With [`GRANT_SHARE`], a limit under 128 per instance is never granted: decided call by call.
pub const MIN_GRANT: u64 = 4;
/// Grants held at once (distinct scope sets); past it no new grant is kept.
const MAX_GRANTS: usize = 10_000;

/// Admissions counted in Redis ahead, for one set of scopes and limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    /// Names the give-back adjustment (applied at most once).
    pub id: String,
    /// The scopes' names, as calls name them.
    pub scopes: Vec<String>,
    /// Redis's second it was counted in.
    pub second: u64,
    /// Requests left.
    pub requests: u64,
    /// Tokens left (`None`: no scope limits tokens).
    pub tokens: Option<u64>,
    /// (requests, tokens) per scope in the window when it was made, grant included.
    pub used: Vec<(u64, u64)>,
    pub until: Instant,
}

impl Grant {
    /// What goes back to Redis: the requests and tokens not used.
    pub fn give_back(&self) -> Option<LimitAdjust> {
        let tokens = self.tokens.unwrap_or(0);
        (self.requests > 0 || tokens > 0).then(|| LimitAdjust {
            id: format!("grant-back:{}", self.id),
            scopes: self.scopes.clone(),
            second: self.second,
            requests: -(self.requests as i64),
            tokens: -(tokens as i64),
            close_stream: None,
        })
    }
}

/// The grants this instance holds, by the exact scopes and limits they were made for.
#[derive(Default)]
pub struct Grants {
    held: Mutex<HashMap<String, Grant>>,
    /// Scope sets a grant is being asked for now: one at a time, so a burst of concurrent
    /// calls does not stack grants that its own calls, already on their way, never use. Calls
    /// that find none wait for the answer rather than each going to Redis.
    asking: Mutex<HashMap<String, Arc<Notify>>>,
}

/// While held, this instance is asking for a grant for one scope set.
pub struct Asking<'a> {
    grants: &'a Grants,
    sig: String,
}

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        if let Some(n) = self.grants.asking.lock().remove(&self.sig) {
            n.notify_waiters();
        }
    }
}

/// The scopes and limits of a call: a grant serves only calls with the very same.
pub fn signature(call: &LimitCall) -> String {
    let mut s = String::new();
    for sc in &call.scopes {
        use std::fmt::Write;
        let _ = writeln!(
            s,
            "{}|{:?}|{:?}|{:?}",
            sc.key, sc.rpm, sc.tpm, sc.concurrent_streams
        );
    }
    s
}

/// What a grant did for a call.
#[derive(Debug, PartialEq)]
pub enum Took {
    /// Admitted from the grant.
    Admitted(LimitVerdict),
    /// Not: the call goes to Redis, with the grant it found spent or expired (taken out) to
    /// give back in the same script.
    Missed(Option<Grant>),
}

impl Grants {
    /// Admits `call` from a grant for its scopes, if one is held, valid and has room.
    pub fn take(&self, call: &LimitCall) -> Took {
        if call.stream || call.tokens < 0 {
            return Took::Missed(None);
        }
        let tokens = call.tokens as u64;
        let sig = signature(call);
        let mut held = self.held.lock();
        let Some(g) = held.get_mut(&sig) else {
            return Took::Missed(None);
        };
        if g.requests == 0 || g.until <= Instant::now() || g.tokens.is_some_and(|t| t < tokens) {
            return Took::Missed(held.remove(&sig));
        }
        g.requests -= 1;
        if let Some(t) = &mut g.tokens {
            *t -= tokens;
        }
        Took::Admitted(LimitVerdict::Admitted {
            second: g.second,
            used: g.used.clone(),
        })
    }

    /// `Some` when this call may ask for a grant for its scopes (no other call is asking).
    pub fn ask(&self, call: &LimitCall) -> Option<Asking<'_>> {
        if call.stream {
            return None;
        }
        let sig = signature(call);
        let mut asking = self.asking.lock();
        if asking.len() >= MAX_GRANTS || asking.contains_key(&sig) {
            return None;
        }
        asking.insert(sig.clone(), Arc::new(Notify::new()));
        Some(Asking { grants: self, sig })
    }

    /// Waits (at most `budget`) for the grant another call is asking for these scopes, then
    /// admits from it if it came. `None` when no call is asking, or none came with room.
    pub async fn wait_for_grant(&self, call: &LimitCall, budget: Duration) -> Option<LimitVerdict> {
        if call.stream {
            return None;
        }
        let n = self.asking.lock().get(&signature(call))?.clone();
        // Registered before looking again: an answer in between is not missed.
        let answered = n.notified();
        if let Took::Admitted(v) = self.take(call) {
            return Some(v);
        }
        tokio::time::timeout(budget, answered).await.ok()?;
        match self.take(call) {
            Took::Admitted(v) => Some(v),
            Took::Missed(Some(back)) => {
                // Spent already: back in the held set for the next script of these scopes.
                self.held.lock().entry(signature(call)).or_insert(back);
                None
            }
            Took::Missed(None) => None,
        }
    }

    /// Keeps a new grant; returns the one it replaces (to give back), or the new one itself
    /// when too many are held.
    pub fn put(&self, call: &LimitCall, grant: Grant) -> Option<Grant> {
        let mut held = self.held.lock();
        let sig = signature(call);
        if held.len() >= MAX_GRANTS && !held.contains_key(&sig) {
            return Some(grant);
        }
        held.insert(sig, grant)
    }

    /// Removes and returns the grants whose time is up.
    pub fn expired(&self, now: Instant) -> Vec<Grant> {
        let mut held = self.held.lock();
        let gone: Vec<String> = held
            .iter()
            .filter(|(_, g)| g.until <= now)
            .map(|(k, _)| k.clone())
            .collect();
        gone.into_iter().filter_map(|k| held.remove(&k)).collect()
    }

    pub fn len(&self) -> usize {
        self.held.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gemini_proxy_sdk::LimitScope;

    fn call(key: &str, tokens: i64, stream: bool) -> LimitCall {
        LimitCall {
            scopes: vec![LimitScope {
                key: key.into(),
                rpm: Some(1000),
                tpm: Some(100_000),
                concurrent_streams: None,
            }],
            tokens,
            stream,
            call_id: "c".into(),
        }
    }

    fn grant(requests: u64, tokens: Option<u64>, ttl: Duration) -> Grant {
        Grant {
            id: "g1".into(),
            scopes: vec!["ip:1".into()],
            second: 77,
            requests,
            tokens,
            used: vec![(10, 100)],
            until: Instant::now() + ttl,
        }
    }

    fn admitted(t: Took) -> bool {
        matches!(t, Took::Admitted(_))
    }

    #[test]
    fn a_grant_admits_its_own_scopes_until_it_runs_out() {
        let g = Grants::default();
        assert_eq!(
            g.take(&call("ip:1", 5, false)),
            Took::Missed(None),
            "nothing held"
        );
        assert!(
            g.put(&call("ip:1", 5, false), grant(2, Some(12), GRANT_TTL))
                .is_none()
        );
        assert_eq!(
            g.take(&call("ip:1", 5, false)),
            Took::Admitted(LimitVerdict::Admitted {
                second: 77,
                used: vec![(10, 100)]
            })
        );
        assert_eq!(
            g.take(&call("ip:2", 5, false)),
            Took::Missed(None),
            "other scopes"
        );
        let mut other_limits = call("ip:1", 5, false);
        other_limits.scopes[0].rpm = Some(5);
        assert!(!admitted(g.take(&other_limits)), "same scope, other limits");
        assert_eq!(
            g.take(&call("ip:1", 5, true)),
            Took::Missed(None),
            "streams are never granted"
        );
        assert!(admitted(g.take(&call("ip:1", 7, false))));
        // No request left: the grant comes out, to be given back with the next script.
        match g.take(&call("ip:1", 0, false)) {
            Took::Missed(Some(back)) => assert_eq!((back.requests, back.tokens), (0, Some(0))),
            other => panic!("{other:?}"),
        }
        assert!(g.is_empty());
    }

    #[test]
    fn a_grant_without_the_tokens_a_call_needs_is_given_back_with_its_script() {
        let g = Grants::default();
        g.put(&call("ip:1", 5, false), grant(3, Some(12), GRANT_TTL));
        match g.take(&call("ip:1", 13, false)) {
            Took::Missed(Some(back)) => assert_eq!((back.requests, back.tokens), (3, Some(12))),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn one_call_at_a_time_asks_for_a_grant() {
        let g = Grants::default();
        let first = g.ask(&call("ip:1", 5, false));
        assert!(first.is_some());
        assert!(
            g.ask(&call("ip:1", 9, false)).is_none(),
            "the same scopes are being asked for"
        );
        assert!(
            g.ask(&call("ip:2", 5, false)).is_some(),
            "other scopes may ask"
        );
        assert!(g.ask(&call("ip:3", 5, true)).is_none(), "streams never ask");
        drop(first);
        assert!(g.ask(&call("ip:1", 5, false)).is_some());
    }

    #[test]
    fn what_is_left_goes_back_once_the_time_is_up() {
        let g = Grants::default();
        g.put(&call("ip:1", 0, false), grant(5, Some(50), Duration::ZERO));
        let gone = g.expired(Instant::now());
        assert_eq!(gone.len(), 1);
        let back = gone[0].give_back().unwrap();
        assert_eq!((back.requests, back.tokens, back.second), (-5, -50, 77));
        assert_eq!(back.id, "grant-back:g1");
        assert!(g.is_empty());
        let used_up = Grant {
            requests: 0,
            tokens: None,
            ..grant(0, None, GRANT_TTL)
        };
        assert_eq!(used_up.give_back(), None);
    }
}
