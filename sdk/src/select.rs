use std::sync::Arc;

/// Health of an upstream key as the key pool sees it.
///
/// ```
/// assert_eq!(gemini_proxy_sdk::KeyState::CoolingDown.as_str(), "cooling_down");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum KeyState {
    /// Serving.
    #[default]
    Active,
    /// Temporarily skipped (quota, backoff).
    CoolingDown,
    /// Circuit breaker half-open: one probe at a time.
    HalfOpen,
    /// Disabled by an operator or found dead.
    Disabled,
}

impl KeyState {
    /// Every state, for code that maps names back (FFI, scripts).
    ///
    /// ```
    /// assert_eq!(gemini_proxy_sdk::KeyState::ALL.len(), 4);
    /// ```
    pub const ALL: [KeyState; 4] = [
        KeyState::Active,
        KeyState::CoolingDown,
        KeyState::HalfOpen,
        KeyState::Disabled,
    ];

    /// The state's code in plugin ABIs (native and Wasm): its index in [`KeyState::ALL`]
    /// (0 active, 1 cooling down, 2 half-open, 3 disabled).
    ///
    /// ```
    /// use gemini_proxy_sdk::KeyState;
    /// assert_eq!(KeyState::HalfOpen.code(), 2);
    /// assert_eq!(KeyState::from_code(2), KeyState::HalfOpen);
    /// ```
    pub fn code(self) -> u8 {
        KeyState::ALL.iter().position(|k| *k == self).unwrap_or(0) as u8
    }

    /// The state for an ABI code; unknown codes read as `Active`.
    ///
    /// ```
    /// assert_eq!(gemini_proxy_sdk::KeyState::from_code(9), gemini_proxy_sdk::KeyState::Active);
    /// ```
    pub fn from_code(code: u8) -> KeyState {
        KeyState::ALL
            .get(usize::from(code))
            .copied()
            .unwrap_or(KeyState::Active)
    }

    /// Stable lowercase name.
    ///
    /// ```
    /// assert_eq!(gemini_proxy_sdk::KeyState::Active.as_str(), "active");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Active => "active",
            KeyState::CoolingDown => "cooling_down",
            KeyState::HalfOpen => "half_open",
            KeyState::Disabled => "disabled",
        }
    }
}

/// One upstream key a call may use. Carries no secret: only the id and what a selector needs.
///
/// ```
/// let c = gemini_proxy_sdk::Candidate::new("primary", 100);
/// assert_eq!(&*c.project, "primary");
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Candidate {
    /// Key id from the config.
    pub id: Arc<str>,
    /// Google Cloud project (keys of one project share quota); defaults to the key id.
    pub project: Arc<str>,
    /// Configured weight (after presets).
    pub weight: u32,
    /// Health state.
    pub state: KeyState,
    /// Calls in flight on this key.
    pub in_flight: u32,
    /// Latency EWMA in milliseconds (0 when unknown).
    pub latency_ewma_ms: f64,
    /// Remaining requests this minute, when known.
    pub remaining_rpm: Option<u64>,
    /// Remaining tokens this minute, when known.
    pub remaining_tpm: Option<u64>,
    /// Remaining requests today, when known.
    pub remaining_rpd: Option<u64>,
}

impl Candidate {
    /// An active candidate in a project of its own.
    ///
    /// ```
    /// assert_eq!(gemini_proxy_sdk::Candidate::new("k", 3).weight, 3);
    /// ```
    pub fn new(id: &str, weight: u32) -> Self {
        let id: Arc<str> = Arc::from(id);
        Candidate {
            project: id.clone(),
            id,
            weight,
            state: KeyState::Active,
            in_flight: 0,
            latency_ewma_ms: 0.0,
            remaining_rpm: None,
            remaining_tpm: None,
            remaining_rpd: None,
        }
    }

    /// The same candidate in a named project.
    ///
    /// ```
    /// assert_eq!(&*gemini_proxy_sdk::Candidate::new("k", 1).in_project("p").project, "p");
    /// ```
    pub fn in_project(mut self, project: &str) -> Self {
        self.project = Arc::from(project);
        self
    }
}

/// Live figures of the candidate keys, indexed like [`Selection::candidates`]. The gateway
/// provides them (lock-free reads); strategies use them through [`Selection::stats`].
///
/// ```
/// use gemini_proxy_sdk::{Candidate, KeyStats, Selection};
/// struct Busy;
/// impl KeyStats for Busy {
///     fn in_flight(&self, i: usize) -> u32 { i as u32 * 10 }
///     fn latency_ewma_ms(&self, _: usize) -> f64 { 100.0 }
/// }
/// let c = vec![Candidate::new("a", 1), Candidate::new("b", 1)];
/// let sel = Selection::new(&c).with_stats(&Busy);
/// assert_eq!(sel.stats().map(|s| s.in_flight(1)), Some(10));
/// ```
pub trait KeyStats: Send + Sync {
    /// Calls in flight on candidate `index`.
    fn in_flight(&self, index: usize) -> u32;
    /// Exponentially weighted latency to the response head, in ms (0 when unknown).
    fn latency_ewma_ms(&self, index: usize) -> f64;
    /// Share (0.0-1.0) of the tightest configured quota (RPM, TPM, RPD) still unused in the key's
    /// project for `model` in the current window; `None` when the key has no configured limit.
    fn headroom(&self, index: usize, model: Option<&str>) -> Option<f64> {
        let _ = (index, model);
        None
    }
    /// Requests and tokens left in the key's project for `model` in the current windows, for the
    /// limits that are configured (all `None` by default).
    fn remaining(&self, index: usize, model: Option<&str>) -> crate::hooks::Remaining {
        let _ = (index, model);
        crate::hooks::Remaining::default()
    }
}

/// The candidates for one attempt, with what filters and the strategy decided.
///
/// Filters call [`exclude`](Self::exclude) or [`set_weight`](Self::set_weight); a strategy calls
/// [`choose`](Self::choose). Once a key is chosen, later plugins of the select phase are skipped.
///
/// ```
/// use gemini_proxy_sdk::{Candidate, Selection};
/// let cands = vec![Candidate::new("a", 1), Candidate::new("b", 1)];
/// let mut sel = Selection::new(&cands);
/// sel.exclude(0);
/// assert_eq!(sel.eligible().map(|(i, _)| i).collect::<Vec<_>>(), vec![1]);
/// sel.choose(1);
/// assert_eq!(sel.chosen().map(|c| &*c.id), Some("b"));
/// ```
pub struct Selection<'a> {
    candidates: &'a [Candidate],
    /// Bitset of excluded indices (one allocation of n/64 words, not n bytes).
    excluded: Vec<u64>,
    excluded_count: usize,
    /// Per-attempt weights, copied from the candidates on the first override only.
    weights: Option<Vec<u32>>,
    chosen: Option<usize>,
    stats: Option<&'a dyn KeyStats>,
}

impl std::fmt::Debug for Selection<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Selection")
            .field("candidates", &self.candidates.len())
            .field("excluded", &self.excluded_count)
            .field("weights_changed", &self.weights.is_some())
            .field("chosen", &self.chosen)
            .field("stats", &self.stats.is_some())
            .finish()
    }
}

impl<'a> Selection<'a> {
    /// A selection over `candidates`, all eligible with their configured weights.
    ///
    /// ```
    /// let c = vec![gemini_proxy_sdk::Candidate::new("a", 5)];
    /// assert_eq!(gemini_proxy_sdk::Selection::new(&c).weight(0), 5);
    /// ```
    pub fn new(candidates: &'a [Candidate]) -> Self {
        Selection {
            candidates,
            excluded: vec![0; candidates.len().div_ceil(64)],
            excluded_count: 0,
            weights: None,
            chosen: None,
            stats: None,
        }
    }

    /// The same selection with live figures attached.
    ///
    /// ```
    /// # use gemini_proxy_sdk::{Candidate, KeyStats, Selection};
    /// # struct Idle;
    /// # impl KeyStats for Idle { fn in_flight(&self, _: usize) -> u32 { 0 } fn latency_ewma_ms(&self, _: usize) -> f64 { 0.0 } }
    /// let c = vec![Candidate::new("a", 1)];
    /// assert!(Selection::new(&c).with_stats(&Idle).stats().is_some());
    /// ```
    pub fn with_stats(mut self, stats: &'a dyn KeyStats) -> Self {
        self.stats = Some(stats);
        self
    }

    /// Live figures of the candidates, when the gateway provides them (it always does; plugin
    /// tests may not).
    ///
    /// ```
    /// let c = vec![gemini_proxy_sdk::Candidate::new("a", 1)];
    /// assert!(gemini_proxy_sdk::Selection::new(&c).stats().is_none());
    /// ```
    pub fn stats(&self) -> Option<&'a dyn KeyStats> {
        self.stats
    }

    /// True once any weight was overridden with [`set_weight`](Self::set_weight).
    ///
    /// ```
    /// let c = vec![gemini_proxy_sdk::Candidate::new("a", 1)];
    /// let mut s = gemini_proxy_sdk::Selection::new(&c);
    /// s.set_weight(0, 1);
    /// assert!(s.weights_changed());
    /// ```
    pub fn weights_changed(&self) -> bool {
        self.weights.is_some()
    }

    /// True if nothing is excluded and no weight changed (strategies may use precomputed
    /// schedules then).
    ///
    /// ```
    /// let c = vec![gemini_proxy_sdk::Candidate::new("a", 1)];
    /// assert!(gemini_proxy_sdk::Selection::new(&c).is_pristine());
    /// ```
    pub fn is_pristine(&self) -> bool {
        self.weights.is_none() && self.excluded_count == 0
    }

    /// All candidates, eligible or not.
    ///
    /// ```
    /// let c = vec![gemini_proxy_sdk::Candidate::new("a", 5)];
    /// assert_eq!(gemini_proxy_sdk::Selection::new(&c).candidates().len(), 1);
    /// ```
    pub fn candidates(&self) -> &'a [Candidate] {
        self.candidates
    }

    /// Eligible candidates with their indices: not excluded and with a weight above 0.
    ///
    /// ```
    /// let c = vec![gemini_proxy_sdk::Candidate::new("a", 0), gemini_proxy_sdk::Candidate::new("b", 1)];
    /// assert_eq!(gemini_proxy_sdk::Selection::new(&c).eligible().count(), 1);
    /// ```
    pub fn eligible(&self) -> impl Iterator<Item = (usize, &'a Candidate)> + '_ {
        self.candidates
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.is_excluded(*i) && self.weight(*i) > 0)
    }

    /// Removes a candidate from this attempt.
    ///
    /// ```
    /// let c = vec![gemini_proxy_sdk::Candidate::new("a", 1)];
    /// let mut s = gemini_proxy_sdk::Selection::new(&c);
    /// s.exclude(0);
    /// assert!(s.is_excluded(0));
    /// ```
    pub fn exclude(&mut self, index: usize) {
        if index < self.candidates.len() {
            let (word, bit) = (index / 64, 1u64 << (index % 64));
            if self.excluded[word] & bit == 0 {
                self.excluded[word] |= bit;
                self.excluded_count += 1;
            }
        }
        if self.chosen == Some(index) {
            self.chosen = None;
        }
    }

    /// True if the candidate was excluded.
    ///
    /// ```
    /// let c = vec![gemini_proxy_sdk::Candidate::new("a", 1)];
    /// assert!(!gemini_proxy_sdk::Selection::new(&c).is_excluded(0));
    /// ```
    pub fn is_excluded(&self, index: usize) -> bool {
        index >= self.candidates.len() || self.excluded[index / 64] & (1u64 << (index % 64)) != 0
    }

    /// The effective weight of a candidate for this attempt.
    ///
    /// ```
    /// let c = vec![gemini_proxy_sdk::Candidate::new("a", 7)];
    /// assert_eq!(gemini_proxy_sdk::Selection::new(&c).weight(0), 7);
    /// ```
    pub fn weight(&self, index: usize) -> u32 {
        match &self.weights {
            Some(w) => w.get(index).copied().unwrap_or(0),
            None => self.candidates.get(index).map_or(0, |c| c.weight),
        }
    }

    /// Overrides a candidate's weight for this attempt (0 makes it ineligible).
    ///
    /// ```
    /// let c = vec![gemini_proxy_sdk::Candidate::new("a", 7)];
    /// let mut s = gemini_proxy_sdk::Selection::new(&c);
    /// s.set_weight(0, 0);
    /// assert_eq!(s.eligible().count(), 0);
    /// ```
    pub fn set_weight(&mut self, index: usize, weight: u32) {
        if index >= self.candidates.len() {
            return;
        }
        let candidates = self.candidates;
        let w = self
            .weights
            .get_or_insert_with(|| candidates.iter().map(|c| c.weight).collect());
        w[index] = weight;
    }

    /// Picks the candidate at `index`. Returns false (and picks nothing) if it is not eligible.
    ///
    /// ```
    /// let c = vec![gemini_proxy_sdk::Candidate::new("a", 1)];
    /// let mut s = gemini_proxy_sdk::Selection::new(&c);
    /// assert!(s.choose(0));
    /// assert!(!s.choose(5));
    /// ```
    pub fn choose(&mut self, index: usize) -> bool {
        if !self.is_excluded(index) && self.weight(index) > 0 {
            self.chosen = Some(index);
            true
        } else {
            false
        }
    }

    /// Picks the candidate with this id, if eligible.
    ///
    /// ```
    /// let c = vec![gemini_proxy_sdk::Candidate::new("a", 1)];
    /// let mut s = gemini_proxy_sdk::Selection::new(&c);
    /// assert!(s.choose_id("a"));
    /// ```
    pub fn choose_id(&mut self, id: &str) -> bool {
        match self.candidates.iter().position(|c| &*c.id == id) {
            Some(i) => self.choose(i),
            None => false,
        }
    }

    /// The chosen candidate, if any.
    ///
    /// ```
    /// let c = vec![gemini_proxy_sdk::Candidate::new("a", 1)];
    /// assert!(gemini_proxy_sdk::Selection::new(&c).chosen().is_none());
    /// ```
    pub fn chosen(&self) -> Option<&'a Candidate> {
        self.chosen.map(|i| &self.candidates[i])
    }

    /// The chosen index, if any.
    ///
    /// ```
    /// let c = vec![gemini_proxy_sdk::Candidate::new("a", 1)];
    /// let mut s = gemini_proxy_sdk::Selection::new(&c);
    /// s.choose(0);
    /// assert_eq!(s.chosen_index(), Some(0));
    /// ```
    pub fn chosen_index(&self) -> Option<usize> {
        self.chosen
    }
}
