//! `key_select`: picks the upstream key for an attempt.
//!
//! Strategies (YAML `strategy:`):
//! - `weighted_round_robin`: nginx's smooth weighted round robin; over any window the picks
//!   follow the weights and keys of one weight are interleaved rather than bunched. With every
//!   key eligible it replays a precomputed schedule (O(1) per pick).
//! - `least_in_flight`: fewest calls in flight per unit of weight.
//! - `latency`: power of two choices over peak-EWMA latency (latency × (in-flight + 1)).
//! - `quota_headroom`: the most unused share of the tightest configured limit (RPM/TPM/RPD) in
//!   the key's project for this model; keys without limits count as fully free.
//! - `consistent_hash`: on `hash_on` (`identity`, `client_ip` or `header:NAME`), so one user's
//!   calls stay on one key (context-cache hits); when that key is out, the user moves to their
//!   next key and only they move. Weighted rendezvous hashing up to 64 keys, a weighted hash
//!   ring (O(log n)) beyond.
//!
//! Pools above 64 keys: `least_in_flight` and `quota_headroom` compare 16 random eligible keys
//! instead of scanning all of them, and `latency` draws its two without listing the pool, so a
//! pick stays O(1) (`cargo bench -p gemini-proxy-plugins`).

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use gemini_proxy_sdk::{
    BuildEnv, Phases, Plugin, PluginError, PluginFactory, RequestContext, Selection,
};
use parking_lot::Mutex;
use serde::Deserialize;

/// Key selection strategies.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Smooth weighted round robin over the eligible keys.
    #[default]
    WeightedRoundRobin,
    /// Fewest calls in flight per unit of weight.
    LeastInFlight,
    /// Power of two choices over peak-EWMA latency.
    Latency,
    /// Most remaining quota for the model.
    QuotaHeadroom,
    /// Sticky by identity, client IP or a header (weighted rendezvous hashing).
    ConsistentHash,
}

/// Config of the `key_select` stage.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct KeySelectConfig {
    /// Which strategy picks the key.
    #[serde(default)]
    pub strategy: Strategy,
    /// For `consistent_hash`: `identity` (default: the authenticated subject, else the
    /// presented credential, else the client IP), `client_ip`, or `header:NAME`.
    #[serde(default)]
    pub hash_on: Option<String>,
}

/// What `consistent_hash` hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    /// Identity subject, else credential, else client IP.
    Identity,
    /// The client IP.
    ClientIp,
    /// A request header (lowercase name).
    Header(String),
}

impl HashOn {
    fn parse(s: Option<&str>) -> Result<HashOn, String> {
        match s.map(str::trim) {
            None | Some("identity") => Ok(HashOn::Identity),
            Some("client_ip") => Ok(HashOn::ClientIp),
            Some(h) if h.starts_with("header:") && h.len() > 7 => {
                Ok(HashOn::Header(h[7..].trim().to_ascii_lowercase()))
            }
            Some(other) => Err(format!(
                "hash_on: `{other}` is not one of identity, client_ip, header:NAME"
            )),
        }
    }

    /// The affinity key of a call, hashed; `None` when the call has none.
    fn key_of(&self, cx: &RequestContext) -> Option<u64> {
        let mut h = Fnv::default();
        match self {
            HashOn::Identity => {
                if let Some(id) = &cx.identity {
                    id.subject.hash(&mut h);
                } else if let Some(c) = &cx.credential {
                    c.value().hash(&mut h);
                } else {
                    cx.request.client_ip?.hash(&mut h);
                }
            }
            HashOn::ClientIp => cx.request.client_ip?.hash(&mut h),
            HashOn::Header(name) => cx.request.headers.get(name)?.as_bytes().hash(&mut h),
        }
        Some(h.finish())
    }
}

/// The `key_select` stage.
pub struct KeySelect {
    strategy: Strategy,
    hash_on: HashOn,
    wrr: SmoothWrr,
    rotor: AtomicU64,
    ring: Mutex<Ring>,
}

impl Plugin for KeySelect {
    fn name(&self) -> &str {
        "key_select"
    }

    fn phases(&self) -> Phases {
        Phases::SELECT
    }

    fn on_select(&self, cx: &RequestContext, sel: &mut Selection<'_>) -> Result<(), PluginError> {
        if sel.chosen().is_some() {
            return Ok(());
        }
        let picked = match self.strategy {
            Strategy::WeightedRoundRobin => self.wrr.pick(sel),
            Strategy::LeastInFlight => self.least_in_flight(sel),
            Strategy::Latency => self.latency(sel),
            Strategy::QuotaHeadroom => self.quota_headroom(cx, sel),
            Strategy::ConsistentHash => match self.hash_on.key_of(cx) {
                Some(k) => self.consistent_hash(sel, k),
                None => self.wrr.pick(sel),
            },
        };
        if let Some(i) = picked {
            sel.choose(i);
        }
        Ok(())
    }
}

impl KeySelect {
    /// A pseudo-random number from a shared counter (cheap, no lock, good enough to spread).
    fn next_random(&self) -> u64 {
        let n = self
            .rotor
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        splitmix(n)
    }

    /// Up to `k` distinct-ish eligible indices: every eligible one when the pool is small,
    /// else random probes (the exact scan would cost O(keys) per call).
    fn sample(&self, sel: &Selection<'_>, k: usize) -> Vec<usize> {
        let n = sel.candidates().len();
        if n <= EXACT_SCAN {
            return sel.eligible().map(|(i, _)| i).collect();
        }
        let mut out = Vec::with_capacity(k);
        let mut r = self.next_random();
        for _ in 0..k * 4 {
            r = splitmix(r);
            let i = (r % n as u64) as usize;
            if !sel.is_excluded(i) && sel.weight(i) > 0 && !out.contains(&i) {
                out.push(i);
                if out.len() == k {
                    break;
                }
            }
        }
        if out.is_empty() {
            // Mostly excluded: fall back to the exact list.
            return sel.eligible().map(|(i, _)| i).take(k).collect();
        }
        out
    }

    fn least_in_flight(&self, sel: &Selection<'_>) -> Option<usize> {
        let Some(stats) = sel.stats() else {
            return self.wrr.pick(sel);
        };
        let eligible = self.sample(sel, SAMPLES);
        if eligible.is_empty() {
            return None;
        }
        // Start at a rotating offset so ties spread instead of piling on the first key.
        let start = (self.next_random() % eligible.len() as u64) as usize;
        let mut best: Option<(usize, f64)> = None;
        for k in 0..eligible.len() {
            let i = eligible[(start + k) % eligible.len()];
            let load = f64::from(stats.in_flight(i) + 1) / f64::from(sel.weight(i).max(1));
            if best.is_none_or(|(_, b)| load < b) {
                best = Some((i, load));
            }
        }
        best.map(|(i, _)| i)
    }

    fn latency(&self, sel: &Selection<'_>) -> Option<usize> {
        let Some(stats) = sel.stats() else {
            return self.wrr.pick(sel);
        };
        let two = if sel.candidates().len() <= EXACT_SCAN {
            let eligible: Vec<usize> = sel.eligible().map(|(i, _)| i).collect();
            match eligible.len() {
                0 => return None,
                1 => return Some(eligible[0]),
                n => {
                    let r = self.next_random();
                    let a = (r % n as u64) as usize;
                    let mut b = ((r >> 32) % n as u64) as usize;
                    if a == b {
                        b = (b + 1) % n;
                    }
                    [eligible[a], eligible[b]]
                }
            }
        } else {
            match self.sample(sel, 2)[..] {
                [] => return None,
                [a] => return Some(a),
                [a, b, ..] => [a, b],
            }
        };
        // Peak EWMA: a slow key and a busy key both look expensive; unknown latency (0) is
        // cheapest, so new keys get measured.
        let cost = |i: usize| {
            stats.latency_ewma_ms(i) * f64::from(stats.in_flight(i) + 1)
                / f64::from(sel.weight(i).max(1))
        };
        Some(if cost(two[0]) <= cost(two[1]) {
            two[0]
        } else {
            two[1]
        })
    }

    fn quota_headroom(&self, cx: &RequestContext, sel: &Selection<'_>) -> Option<usize> {
        let Some(stats) = sel.stats() else {
            return self.wrr.pick(sel);
        };
        let model = cx.request.model.as_deref();
        let mut best: Option<(usize, f64)> = None;
        let mut ties = 0u64;
        let r = self.next_random();
        for i in self.sample(sel, SAMPLES) {
            let h = stats.headroom(i, model).unwrap_or(1.0);
            match best {
                Some((_, b)) if h < b - 1e-9 => {}
                Some((_, b)) if (h - b).abs() <= 1e-9 => {
                    // Reservoir sampling among equals keeps ties spread.
                    ties += 1;
                    if splitmix(r ^ ties).is_multiple_of(ties + 1) {
                        best = Some((i, h));
                    }
                }
                _ => {
                    best = Some((i, h));
                    ties = 0;
                }
            }
        }
        best.map(|(i, _)| i)
    }

    fn consistent_hash(&self, sel: &Selection<'_>, key: u64) -> Option<usize> {
        if sel.candidates().len() <= EXACT_SCAN {
            return rendezvous(sel, key);
        }
        let mut ring = self.ring.lock();
        let cands = sel.candidates();
        if ring.list != (cands.as_ptr() as usize, cands.len()) {
            *ring = Ring::build(sel);
        }
        ring.lookup(sel, key)
    }
}

/// Pools up to this size are scanned exactly; bigger ones are sampled.
const EXACT_SCAN: usize = 64;
/// Random probes per pick for sampled strategies on big pools.
const SAMPLES: usize = 16;
/// Ring points per unit of (gcd-reduced) weight, and the most points a ring may have.
const RING_POINTS_PER_WEIGHT: u64 = 16;
const MAX_RING_POINTS: u64 = 1 << 20;

/// A consistent-hash ring for big pools: points per key proportional to its weight; a call
/// goes to the first eligible point clockwise from its hash, so a resting key's users move to
/// their next points and nobody else moves. Lookup is O(log points).
#[derive(Default)]
struct Ring {
    list: (usize, usize),
    points: Vec<(u64, u32)>,
}

impl Ring {
    fn build(sel: &Selection<'_>) -> Ring {
        let cands = sel.candidates();
        let g = cands
            .iter()
            .map(|c| u64::from(c.weight))
            .filter(|w| *w > 0)
            .fold(0, gcd);
        let mut per_weight = RING_POINTS_PER_WEIGHT;
        let total: u64 = cands.iter().map(|c| u64::from(c.weight) / g.max(1)).sum();
        while per_weight > 1 && total * per_weight > MAX_RING_POINTS {
            per_weight /= 2;
        }
        let mut points = Vec::new();
        for (i, c) in cands.iter().enumerate() {
            let mut h = Fnv::default();
            c.id.hash(&mut h);
            let base = h.finish();
            let n = (u64::from(c.weight) / g.max(1) * per_weight).min(MAX_RING_POINTS);
            for p in 0..n {
                points.push((splitmix(base ^ splitmix(p)), i as u32));
            }
        }
        points.sort_unstable();
        Ring {
            list: (cands.as_ptr() as usize, cands.len()),
            points,
        }
    }

    fn lookup(&self, sel: &Selection<'_>, key: u64) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let h = splitmix(key);
        let start = self.points.partition_point(|(p, _)| *p < h);
        let n = self.points.len();
        for k in 0..n {
            let i = self.points[(start + k) % n].1 as usize;
            if !sel.is_excluded(i) && sel.weight(i) > 0 {
                return Some(i);
            }
        }
        None
    }
}

/// Weighted rendezvous hashing: the eligible candidate with the lowest `-ln(u) / weight`,
/// where `u` is a hash of (candidate id, affinity key) mapped to (0, 1).
fn rendezvous(sel: &Selection<'_>, key: u64) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, c) in sel.eligible() {
        let mut h = Fnv::default();
        c.id.hash(&mut h);
        let x = splitmix(h.finish() ^ key);
        let u = ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let score = -u.ln() / f64::from(sel.weight(i).max(1));
        if best.is_none_or(|(_, b)| score < b) {
            best = Some((i, score));
        }
    }
    best.map(|(i, _)| i)
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a: stable across processes and versions (std's hasher is randomly keyed).
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

impl PluginFactory for KeySelect {
    const KIND: &'static str = "key_select";
    type Config = KeySelectConfig;

    fn build(config: KeySelectConfig, _env: &BuildEnv) -> Result<Arc<dyn Plugin>, PluginError> {
        let hash_on = HashOn::parse(config.hash_on.as_deref()).map_err(PluginError::new)?;
        if config.hash_on.is_some() && config.strategy != Strategy::ConsistentHash {
            return Err(PluginError::new(
                "hash_on applies to strategy consistent_hash only",
            ));
        }
        Ok(Arc::new(KeySelect {
            strategy: config.strategy,
            hash_on,
            wrr: SmoothWrr::default(),
            rotor: AtomicU64::new(0),
            ring: Mutex::new(Ring::default()),
        }))
    }
}

/// The longest precomputed schedule (entries); bigger weight sums use the O(n) walk.
const MAX_SCHEDULE: u64 = 1 << 16;

/// Smooth weighted round robin, by candidate index.
#[derive(Default)]
pub struct SmoothWrr {
    state: Mutex<WrrState>,
}

#[derive(Default)]
struct WrrState {
    /// Identity of the candidate list the state belongs to (address and length).
    list: (usize, usize),
    current: Vec<i64>,
    /// The smooth sequence over all candidates at their configured weights.
    schedule: Vec<u32>,
    pos: usize,
}

impl WrrState {
    fn reset(&mut self, sel: &Selection<'_>) {
        let cands = sel.candidates();
        self.list = (cands.as_ptr() as usize, cands.len());
        self.current = vec![0; cands.len()];
        self.pos = 0;
        self.schedule.clear();
        let weights: Vec<u64> = cands.iter().map(|c| u64::from(c.weight)).collect();
        let g = weights.iter().copied().filter(|w| *w > 0).fold(0, gcd);
        if g == 0 {
            return;
        }
        let total: u64 = weights.iter().map(|w| w / g).sum();
        if total > MAX_SCHEDULE {
            return;
        }
        let mut cur = vec![0i64; cands.len()];
        for _ in 0..total {
            let mut best = 0;
            for (i, w) in weights.iter().enumerate() {
                cur[i] += (*w / g) as i64;
                if cur[i] > cur[best] || (*w > 0 && weights[best] == 0) {
                    best = i;
                }
            }
            cur[best] -= total as i64;
            self.schedule.push(best as u32);
        }
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

impl SmoothWrr {
    /// Picks the index of an eligible candidate, or `None` if there is none.
    pub fn pick(&self, sel: &Selection<'_>) -> Option<usize> {
        let mut st = self.state.lock();
        let cands = sel.candidates();
        if st.list != (cands.as_ptr() as usize, cands.len()) {
            st.reset(sel);
        }
        if !st.schedule.is_empty() && !sel.weights_changed() {
            // Replay the schedule, skipping excluded keys: the others keep their proportions.
            let n = st.schedule.len();
            let limit = if sel.is_pristine() { 1 } else { n.min(64) };
            for _ in 0..limit {
                let i = st.schedule[st.pos] as usize;
                st.pos = (st.pos + 1) % n;
                if !sel.is_excluded(i) && sel.weight(i) > 0 {
                    return Some(i);
                }
            }
        }
        // The general case: nginx's algorithm over the eligible keys at their current weights.
        let mut total: i64 = 0;
        let mut best: Option<usize> = None;
        for (i, _) in sel.eligible() {
            let w = i64::from(sel.weight(i));
            total += w;
            st.current[i] += w;
            if best.is_none_or(|b| st.current[i] > st.current[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        st.current[b] -= total;
        Some(b)
    }
}

#[cfg(test)]
mod tests;
