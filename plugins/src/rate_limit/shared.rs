//! The limits as a cluster keeps them: the shared counters decide at admission (one round trip)
//! and again when a body turns out larger than estimated or opens an OpenAI-style stream; the
//! local log keeps this instance's own count; other corrections go back in the background.
//! When the counters do not answer in time, this instance decides alone with its share of each
//! limit (the limit divided by the instances last seen) and replays what it admitted once they
//! are back, so the shared count converges. Every adjustment is applied at most once.

use std::sync::atomic::Ordering;

use gemini_proxy_sdk::{
    LimitAdjust, LimitCall, LimitKind, LimitScope, LimitVerdict, Rejection, RequestContext,
    SharedLimitsHandle,
};

use super::{Budget, Limits, RateLimit, SharedTicket, Ticket, estimate_of};

/// A call's scopes: (key, limits, what to call it in a refusal).
type Scopes = [(String, Limits, &'static str)];

/// The call as the shared counters see it.
fn shared_call(scopes: &Scopes, tokens: i64, stream: bool, id: &str) -> LimitCall {
    LimitCall {
        scopes: scopes
            .iter()
            .map(|(key, l, _)| LimitScope {
                key: key.clone(),
                rpm: l.rpm,
                tpm: l.tpm,
                concurrent_streams: l.concurrent_streams,
            })
            .collect(),
        tokens,
        stream,
        call_id: id.to_string(),
    }
}

fn counts_streams(scopes: &Scopes) -> bool {
    scopes
        .iter()
        .any(|(_, l, _)| l.concurrent_streams.is_some())
}

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
        let id = format!(
            "{:x}-{}",
            self.lease_base,
            self.leases.fetch_add(1, Ordering::Relaxed)
        );
        let stream = cx.request.stream && counts_streams(&scopes);
        let estimate = estimate_of(cx.request.body_size.unwrap_or(0));
        let call = shared_call(&scopes, estimate as i64, stream, &id);
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
                self.attach(cx, second, id, stream);
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
                    // Replayed once the counters are back, unless Redis counted it after all.
                    shared.adjust(LimitAdjust {
                        id: id.clone(),
                        scopes: call.scopes.iter().map(|s| s.key.clone()).collect(),
                        second: 0,
                        requests: 1,
                        tokens: estimate as i64,
                        close_stream: None,
                    });
                    self.attach(cx, 0, id, false);
                }
                decided
            }
        })
    }

    fn attach(&self, cx: &mut RequestContext, second: u64, id: String, stream: bool) {
        if let Some(t) = cx.extensions.get_mut::<Ticket>() {
            t.shared = Some(SharedTicket {
                second,
                lease: stream.then(|| id.clone()),
                id,
                adjustments: 0,
            });
        }
    }

    /// The body is in. A larger body than estimated, or an OpenAI-style stream, is decided by
    /// the shared counters again (a refusal takes the call back there); a smaller one is
    /// corrected in the background. `None`: decide locally (not counted in Redis, or Redis away).
    pub(super) async fn check_body_shared(
        &self,
        shared: &SharedLimitsHandle,
        cx: &mut RequestContext,
        bytes: u64,
    ) -> Option<Result<(), Rejection>> {
        let t = cx.extensions.get::<Ticket>()?;
        let st = t.shared.as_ref().filter(|st| st.second > 0)?;
        let (second, estimate, id) = (st.second, t.estimate, st.id.clone());
        let had_lease = st.lease.is_some();
        let delta = estimate_of(bytes) as i64 - estimate as i64;
        let scopes = self.scopes(cx);
        let new_stream = cx.request.stream && !had_lease && counts_streams(&scopes);
        if !new_stream && delta <= 0 {
            if delta < 0 {
                self.adjust_tokens(shared, cx, &scopes, delta);
            }
            return Some(Ok(()));
        }
        let call = shared_call(&scopes, delta, new_stream, &id);
        match shared.charge(&call, second, estimate).await {
            Ok(LimitVerdict::Admitted { .. }) => {
                if let Some(st) = cx
                    .extensions
                    .get_mut::<Ticket>()
                    .and_then(|t| t.shared.as_mut())
                    && new_stream
                {
                    st.lease = Some(id);
                }
                Some(Ok(()))
            }
            Ok(LimitVerdict::Refused {
                scope,
                kind,
                retry_after,
            }) => {
                let (_, l, what) = &scopes[scope.min(scopes.len() - 1)];
                // Redis took the call back; nothing more to adjust there.
                if let Some(t) = cx.extensions.get_mut::<Ticket>() {
                    t.shared = None;
                }
                Some(Err(refusal(kind, *l, what).retry_after(retry_after)))
            }
            Err(_) => {
                self.adjust_tokens(shared, cx, &scopes, delta);
                None
            }
        }
    }

    /// Queues a token correction of the call (applied once).
    fn adjust_tokens(
        &self,
        shared: &SharedLimitsHandle,
        cx: &mut RequestContext,
        scopes: &Scopes,
        delta: i64,
    ) {
        let keys: Vec<String> = scopes.iter().map(|s| s.0.clone()).collect();
        let Some(st) = cx
            .extensions
            .get_mut::<Ticket>()
            .and_then(|t| t.shared.as_mut())
        else {
            return;
        };
        st.adjustments += 1;
        shared.adjust(LimitAdjust {
            id: format!("{}:{}", st.id, st.adjustments),
            scopes: keys,
            second: st.second,
            requests: 0,
            tokens: delta,
            close_stream: None,
        });
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
            id: format!("{}:done", st.id),
            scopes: t.keys.clone(),
            second: st.second,
            requests: 0,
            tokens: delta,
            close_stream: st.lease.clone().map(|l| (l, t.keys.clone())),
        });
    }
}

fn refusal(kind: LimitKind, l: Limits, what: &str) -> Rejection {
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
