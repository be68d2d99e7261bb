//! The last hour of this instance's traffic in 10-second steps (`GET /api/timeline`, the
//! console's overview charts): calls, errors, latency and overhead percentiles, tokens, and the
//! open calls, streams and Live sessions sampled once a second (the highest of each step).

use serde_json::{Value, json};

use super::{Measures, OVERHEAD_BOUNDS_MS, Slot, percentile, percentile_in};

/// Seconds per step.
pub const STEP_S: u64 = 10;
/// One hour of steps.
const STEPS: usize = 360;

/// Gauges read by the once-a-second sampler.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    pub in_flight: i64,
    pub streams: i64,
    pub live_sessions: i64,
}

#[derive(Clone, Copy, Default)]
struct Step {
    epoch: u64,
    calls: Slot,
    tokens: u64,
    /// Highest sample of the step; `None` until the sampler ran in it.
    gauges: Option<Gauges>,
}

pub(super) struct Timeline {
    steps: Vec<Step>,
    /// The first step this process saw: nothing before it is shown as zero traffic.
    first_epoch: u64,
}

impl Timeline {
    pub(super) fn new(now_s: u64) -> Timeline {
        Timeline {
            steps: vec![Step::default(); STEPS],
            first_epoch: now_s / STEP_S,
        }
    }

    fn step(&mut self, now_s: u64) -> &mut Step {
        let epoch = now_s / STEP_S;
        let s = &mut self.steps[(epoch % STEPS as u64) as usize];
        if s.epoch != epoch {
            *s = Step {
                epoch,
                ..Step::default()
            };
        }
        s
    }

    pub(super) fn record(&mut self, now_s: u64, m: &Measures, tokens: u64) {
        let s = self.step(now_s);
        s.calls.count_call(m);
        s.tokens += tokens;
    }

    pub(super) fn sample(&mut self, now_s: u64, g: Gauges) {
        let s = self.step(now_s);
        let m = s.gauges.get_or_insert(g);
        m.in_flight = m.in_flight.max(g.in_flight);
        m.streams = m.streams.max(g.streams);
        m.live_sessions = m.live_sessions.max(g.live_sessions);
    }

    /// Every step of the last hour since this process started, oldest first.
    pub(super) fn points(&self, now_s: u64) -> Value {
        let now = now_s / STEP_S;
        let from = (now + 1).saturating_sub(STEPS as u64).max(self.first_epoch);
        let round = |v: Option<f64>| v.map(|x| (x * 1000.0).round() / 1000.0);
        let points: Vec<Value> = (from..=now)
            .map(|epoch| {
                let s = self.steps[(epoch % STEPS as u64) as usize];
                let s = if s.epoch == epoch {
                    s
                } else {
                    Step::default()
                };
                let c = &s.calls;
                let g = s.gauges;
                json!({
                    "t": epoch * STEP_S,
                    "calls": c.count,
                    "errors": c.errors,
                    "p50_ms": round(percentile(&c.latency, c.count, 0.5)),
                    "p95_ms": round(percentile(&c.latency, c.count, 0.95)),
                    "overhead_p50_ms": round(percentile_in(&OVERHEAD_BOUNDS_MS, &c.overhead, c.overhead_count, 0.5)),
                    "overhead_p95_ms": round(percentile_in(&OVERHEAD_BOUNDS_MS, &c.overhead, c.overhead_count, 0.95)),
                    "tokens": s.tokens,
                    "in_flight": g.map(|g| g.in_flight),
                    "streams": g.map(|g| g.streams),
                    "live_sessions": g.map(|g| g.live_sessions),
                })
            })
            .collect();
        json!({ "step_seconds": STEP_S, "points": points })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(ms: f64, error: bool) -> Measures {
        Measures {
            latency_ms: ms,
            ttfb_ms: None,
            overhead_ms: Some(0.1),
            error,
        }
    }

    #[test]
    fn steps_hold_calls_tokens_and_the_highest_sample() {
        let t0 = 1_000_000;
        let mut t = Timeline::new(t0);
        for i in 0..10 {
            t.record(t0 + 1, &call(20.0, i == 0), 100);
        }
        t.record(t0 + 25, &call(3.0, false), 7);
        t.sample(
            t0 + 2,
            Gauges {
                in_flight: 4,
                streams: 1,
                live_sessions: 0,
            },
        );
        t.sample(
            t0 + 3,
            Gauges {
                in_flight: 2,
                streams: 3,
                live_sessions: 2,
            },
        );
        let v = t.points(t0 + 30);
        let p = v["points"].as_array().unwrap();
        assert_eq!(p.len(), 4, "from the first step seen to now: {v}");
        assert_eq!(p[0]["t"], t0);
        assert_eq!(
            (p[0]["calls"].as_u64(), p[0]["errors"].as_u64()),
            (Some(10), Some(1))
        );
        assert_eq!(p[0]["tokens"], 1000);
        assert_eq!(
            (
                p[0]["in_flight"].as_i64(),
                p[0]["streams"].as_i64(),
                p[0]["live_sessions"].as_i64()
            ),
            (Some(4), Some(3), Some(2))
        );
        let p50 = p[0]["p50_ms"].as_f64().unwrap();
        assert!((10.0..=20.0).contains(&p50), "{p50}");
        assert_eq!(p[1]["calls"], 0);
        assert!(p[1]["in_flight"].is_null(), "never sampled");
        assert_eq!(p[2]["tokens"], 7);
    }

    #[test]
    fn an_hour_later_old_steps_are_gone() {
        let t0 = 2_000_000;
        let mut t = Timeline::new(t0);
        t.record(t0, &call(1.0, false), 5);
        let later = t0 + 3600 + 20;
        t.record(later, &call(1.0, false), 1);
        let v = t.points(later);
        let p = v["points"].as_array().unwrap();
        assert_eq!(p.len(), STEPS);
        assert_eq!(
            p.iter().map(|x| x["tokens"].as_u64().unwrap()).sum::<u64>(),
            1
        );
        assert_eq!(p.last().unwrap()["t"], later / STEP_S * STEP_S);
    }
}
