//! Limits shared by every instance of a cluster. The gateway hands a stage an implementation in
//! [`BuildEnv::shared_limits`](crate::BuildEnv) when it runs as a cluster; a stage that finds
//! none (one instance), or gets [`SharedUnavailable`], decides with its own local counts.

use std::sync::Arc;
use std::time::Duration;

/// One scope a call counts in (an address, a user), with its limits; `None` = no limit.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitScope {
    /// The scope's name, unique per caller (`ip:..`, `user:..`); never a secret.
    pub key: String,
    /// Requests a minute.
    pub rpm: Option<u64>,
    /// Tokens a minute.
    pub tpm: Option<u64>,
    /// Streams open at once.
    pub concurrent_streams: Option<u64>,
}

/// A call to admit: checked against every scope at once, counted in all or none.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitCall {
    /// Where it counts.
    pub scopes: Vec<LimitScope>,
    /// Tokens charged now (an estimate, corrected later with [`LimitAdjust`]); for a
    /// [`charge`](SharedLimits::charge), the change (negative when the estimate was high).
    pub tokens: i64,
    /// Opens a stream: counted against `concurrent_streams` until closed.
    pub stream: bool,
    /// Unique per call (never from the client): names the call's stream lease, and an
    /// adjustment with this id replays the call's admission at most once.
    pub call_id: String,
}

/// Which limit refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    /// Requests a minute.
    Rpm,
    /// Tokens a minute.
    Tpm,
    /// Streams open at once.
    Streams,
}

/// What the shared counters decided.
#[derive(Debug, Clone, PartialEq)]
pub enum LimitVerdict {
    /// Counted. `second` is the shared clock's second the call was counted in (pass it back in
    /// adjustments); `used` is, per scope in order, (requests, tokens) in the window after it.
    Admitted {
        /// Redis's second.
        second: u64,
        /// (requests, tokens) per scope.
        used: Vec<(u64, u64)>,
    },
    /// Refused by `scope` (an index into the call's scopes); nothing was counted.
    Refused {
        /// Index of the refusing scope.
        scope: usize,
        /// The limit reached.
        kind: LimitKind,
        /// When the oldest counted second leaves the window.
        retry_after: Duration,
    },
}

/// A later change to an admitted call's count: tokens corrected, the call taken back, its stream
/// closed. Applied in the background, in order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LimitAdjust {
    /// Unique per adjustment: applied at most once, however often it is retried. The call's own
    /// `call_id` replays its admission (skipped when the admission was counted after all).
    pub id: String,
    /// The scope keys the call was counted in.
    pub scopes: Vec<String>,
    /// The second it was counted in ([`LimitVerdict::Admitted`]); 0: the second the
    /// adjustment was made (a replayed admission).
    pub second: u64,
    /// Added to its requests (-1 takes the call back).
    pub requests: i64,
    /// Added to its tokens (negative when the estimate was too high).
    pub tokens: i64,
    /// Closes the call's stream lease in these scopes.
    pub close_stream: Option<(String, Vec<String>)>,
}

/// The shared counters could not answer in time (Redis away, slow or wrong).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedUnavailable;

/// Counters every instance of a cluster sees. Implementations answer within a small time budget
/// or return [`SharedUnavailable`]; they never fail a call by themselves.
#[crate::async_trait]
pub trait SharedLimits: Send + Sync + 'static {
    /// Checks the call against every scope over the last 60 seconds and counts it if all allow.
    async fn admit(&self, call: &LimitCall) -> Result<LimitVerdict, SharedUnavailable>;
    /// The body of a call admitted in `second` is in: charges `call.tokens` more (the body's real
    /// size minus the estimate; may be negative) and opens a stream when `call.stream` (known
    /// only from an OpenAI-style body), checking the limits as admission did. A refusal takes
    /// the whole call back (its request and `estimate` tokens).
    async fn charge(
        &self,
        call: &LimitCall,
        second: u64,
        estimate: u64,
    ) -> Result<LimitVerdict, SharedUnavailable>;
    /// Queues an adjustment; never blocks.
    fn adjust(&self, adjust: LimitAdjust);
    /// Live instances last seen (at least 1): while the counters are away, each instance keeps
    /// to its share of a limit.
    fn instances(&self) -> u32;
}

/// A handle to the cluster's counters, cheap to clone.
#[derive(Clone)]
pub struct SharedLimitsHandle(pub Arc<dyn SharedLimits>);

impl std::fmt::Debug for SharedLimitsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedLimitsHandle")
    }
}

impl std::ops::Deref for SharedLimitsHandle {
    type Target = dyn SharedLimits;
    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}
