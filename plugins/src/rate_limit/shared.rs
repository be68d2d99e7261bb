//! The limits as a cluster keeps them: the shared counters decide at admission (one round trip),
//! the local log keeps this instance's own count, and corrections go back in the background.
//! When the counters do not answer in time, this instance decides alone with its share of each
//! limit (the limit divided by the instances last seen) and replays what it admitted once they
//! are back, so the shared count converges.

use std::sync::atomic::Ordering;

use gemini_proxy_sdk::{
    LimitAdjust, LimitCall, LimitKind, LimitScope, LimitVerdict, Rejection, RequestContext,
    SharedLimitsHandle,
};

use super::{Budget, RateLimit, SharedTicket, Ticket, estimate_of};

impl RateLimit {
    /// Admission through the shared counters; `None` when this call has no limit to share.
    pub(super) async fn check_shared(
        &self,
        shared: &SharedLimitsHandle,
        cx: &mut RequestContext,
    ) -> Option<Result<(), Rejection>> {
        let scopes = self.scopes(cx);
        if scopes.iter().all(|(_, l, _)| l.is_unlimited()) {
            return None;
        }
        let stream = cx.request.stream
            && scopes
                .iter()
                .any(|(_, l, _)| l.concurrent_streams.is_some());
        let lease = stream.then(|| {
            format!(
                "{:x}-{}",
                self.lease_base,
                self.leases.fetch_add(1, Ordering::Relaxed)
            )
        });
        let call = LimitCall {
            scopes: scopes
                .iter()
                .map(|(key, l, _)| LimitScope {
                    key: key.clone(),
                    rpm: l.rpm,
                    tpm: l.tpm,
                    concurrent_streams: l.concurrent_streams,
                })
                .collect(),
            tokens: estimate_of(cx.request.body_size.unwrap_or(0)),
            stream,
            call_id: lease.clone().unwrap_or_default(),
        };
        Some(match shared.admit(&call).await {
            Ok(LimitVerdict::Admitted { second, used }) => {
                // Counted locally too: this instance's share, should Redis go away.
                let _ = self.check(cx, 1, false);
                let remaining = scopes
                    .iter()
                    .zip(&used)
                    .flat_map(|((_, l, _), (r, t))| {
                        [(l.rpm, *r), (l.tpm, *t)]
                            .into_iter()
                            .filter_map(|(lim, u)| lim.map(|lim| 1.0 - u as f64 / lim as f64))
                    })
                    .fold(1.0_f64, f64::min);
                if let Some(b) = cx.extensions.get_mut::<Budget>() {
                    b.remaining_share = remaining.max(0.0);
                }
                self.attach(cx, second, used.iter().map(|u| u.1).collect(), lease);
                Ok(())
            }
            Ok(LimitVerdict::Refused {
                scope,
                kind,
                retry_after,
            }) => {
                let (_, l, what) = &scopes[scope.min(scopes.len() - 1)];
                Err(refusal(kind, *l, what).retry_after(retry_after))
            }
            Err(_) => {
                let share = u64::from(shared.instances());
                let decided = self.check(cx, share, true);
                if decided.is_ok() {
                    // Replayed once the counters are back (at the second it happened).
                    shared.adjust(LimitAdjust {
                        scopes: call.scopes.iter().map(|s| s.key.clone()).collect(),
                        second: 0,
                        requests: 1,
                        tokens: call.tokens as i64,
                        close_stream: None,
                    });
                    self.attach(cx, 0, Vec::new(), None);
                }
                decided
            }
        })
    }

    fn attach(
        &self,
        cx: &mut RequestContext,
        second: u64,
        tokens: Vec<u64>,
        lease: Option<String>,
    ) {
        if let Some(t) = cx.extensions.get_mut::<Ticket>() {
            t.shared = Some(SharedTicket {
                second,
                tokens,
                lease,
            });
        }
    }

    /// The body is in: refuse what the shared count (as admission saw it) cannot take, else
    /// correct the shared tokens. `None`: the call is not counted in the shared counters.
    pub(super) fn check_body_shared(
        &self,
        shared: &SharedLimitsHandle,
        cx: &RequestContext,
        actual: u64,
    ) -> Option<Result<(), Rejection>> {
        let t = cx.extensions.get::<Ticket>()?;
        let st = t.shared.as_ref().filter(|st| !st.tokens.is_empty())?;
        let scopes = self.scopes(cx);
        let over = scopes
            .iter()
            .zip(&st.tokens)
            .find_map(|((_, l, what), used)| {
                let tpm = l.tpm?;
                (actual > t.estimate && used - t.estimate.min(*used) + actual > tpm)
                    .then(|| refusal(LimitKind::Tpm, *l, what))
            });
        let keys: Vec<String> = scopes.iter().map(|s| s.0.clone()).collect();
        if let Some(r) = over {
            shared.adjust(LimitAdjust {
                scopes: keys.clone(),
                second: st.second,
                requests: -1,
                tokens: -(t.estimate as i64),
                close_stream: st.lease.clone().map(|l| (l, keys)),
            });
            return Some(Err(r));
        }
        if actual != t.estimate {
            shared.adjust(LimitAdjust {
                scopes: keys,
                second: st.second,
                requests: 0,
                tokens: actual as i64 - t.estimate as i64,
                close_stream: None,
            });
        }
        Some(Ok(()))
    }

    /// The call ended: its tokens as the upstream counted them, and its stream closed.
    pub(super) fn complete_shared(
        &self,
        shared: &SharedLimitsHandle,
        t: &Ticket,
        actual: Option<u64>,
    ) {
        let Some(st) = &t.shared else { return };
        let delta = actual.map_or(0, |a| a as i64 - t.estimate as i64);
        if delta == 0 && st.lease.is_none() {
            return;
        }
        shared.adjust(LimitAdjust {
            scopes: t.keys.clone(),
            second: st.second,
            requests: 0,
            tokens: delta,
            close_stream: st.lease.clone().map(|l| (l, t.keys.clone())),
        });
    }
}

fn refusal(kind: LimitKind, l: super::Limits, what: &str) -> Rejection {
    match kind {
        LimitKind::Rpm => Rejection::new(
            429,
            format!(
                "rate limit: more than {} requests a minute for this {what}",
                l.rpm.unwrap_or(0)
            ),
        )
        .reason("rpm"),
        LimitKind::Tpm => super::over_tpm_message(l.tpm.unwrap_or(0), what),
        LimitKind::Streams => super::over_streams(l.concurrent_streams.unwrap_or(0), what),
    }
}
