//! The end of a call: one outcome (`CallState::done`) handed to every observer in turn:
//! metrics, the key pool's token counts, `/performance` and `/errors`, anomaly detection, the
//! pipeline's completion phase, and the audit trail.

use std::time::{SystemTime, UNIX_EPOCH};

use pingora::proxy::Session;

use super::GatewayProxy;
use super::call::CallState;
use super::failure::ErrorClass;
use crate::stats::{CallRecord, ErrorSample};

impl GatewayProxy {
    pub(super) async fn finish(&self, session: &mut Session, ctx: &mut CallState) {
        if ctx.counted_in_flight {
            self.shared.metrics.in_flight.dec();
        }
        if ctx.counted_stream {
            self.shared.metrics.streams_active.dec();
        }
        let status = session
            .response_written()
            .filter(|r| !r.status.is_informational())
            .map(|r| r.status.as_u16())
            // A Live session answered its upgrade itself.
            .unwrap_or(ctx.done.status);
        if ctx.done.status == 0 {
            ctx.done.status = status;
        }
        ctx.done.total_latency = ctx.started.elapsed();
        ctx.done.error_class = ctx.error.map(|c| c.as_str().to_string());
        let method = session.req_header().method.as_str().to_string();
        let model = self.count_metrics(ctx, &method, status);
        self.observe(ctx, status, &model);
        if let Some(cx) = &ctx.cx {
            ctx.runtime.pipeline.complete(cx, &ctx.done);
        } else if ctx.done.status == 404 {
            tracing::debug!(request_id = %ctx.request_id, path = %session.req_header().uri.path(), "no route");
        }
        if let Some(audit) = &self.shared.audit {
            // The path without its query: `?key=` may hold a credential.
            let e = crate::audit::call_event(
                &ctx.request_id,
                &method,
                session.req_header().uri.path(),
                ctx.cx.as_ref(),
                &ctx.done,
                ctx.api,
                ctx.model(),
                &ctx.extra,
            );
            audit.record_async(e).await;
        }
    }

    /// Prometheus figures and the pool's token counts; returns the model's label.
    fn count_metrics(&self, ctx: &CallState, method: &str, status: u16) -> String {
        let m = &self.shared.metrics;
        let status_label = status.to_string();
        m.http_requests
            .with_label_values(&[ctx.api, method, &status_label])
            .inc();
        m.request_duration
            .with_label_values(&[ctx.api])
            .observe(ctx.done.total_latency.as_secs_f64());
        // Only a model the upstream has served becomes a label (see `LabelCap`).
        let name = ctx.model().unwrap_or("");
        let model = if (200..300).contains(&ctx.done.upstream_status) {
            m.models.learn(name)
        } else {
            m.models.get(name)
        };
        if ctx.done.attempts > 0 {
            m.gemini_calls
                .with_label_values(&[ctx.action, &model, &status_label])
                .inc();
            if let Some(d) = ctx.done.upstream_latency {
                m.upstream_duration
                    .with_label_values(&[ctx.action])
                    .observe(d.as_secs_f64());
                m.overhead
                    .with_label_values(&[ctx.api])
                    .observe(ctx.done.total_latency.saturating_sub(d).as_secs_f64());
            }
            if let Some(d) = ctx.done.time_to_first_byte {
                m.ttfb
                    .with_label_values(&[ctx.action])
                    .observe(d.as_secs_f64());
            }
        }
        if let (Some(u), Some(i)) = (ctx.done.usage, ctx.key_index)
            && let Some(k) = ctx.runtime.keys.get(i)
        {
            // Gemini's TPM limits count input tokens.
            self.shared
                .pool
                .usage
                .count_tokens(&k.project, ctx.model(), u.prompt_tokens);
        }
        if let Some(u) = ctx.done.usage {
            for (kind, n) in [
                ("prompt", u.prompt_tokens),
                ("candidates", u.candidates_tokens),
                ("thoughts", u.thoughts_tokens),
                ("cached", u.cached_tokens),
            ] {
                m.tokens.with_label_values(&[&model, kind]).inc_by(n);
            }
        }
        if ctx.done.truncated {
            m.truncated.inc();
        }
        model
    }

    /// `/performance`, `/errors` and anomaly detection.
    fn observe(&self, ctx: &CallState, status: u16, model: &str) {
        let failed = ctx.error.is_some() || status >= 400;
        let error = failed.then(|| ErrorSample {
            at_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            request_id: (!ctx.client_request_id).then(|| ctx.request_id.clone()),
            status,
            upstream_status: ctx.done.upstream_status,
            upstream_reason: ctx.upstream_reason.clone(),
            class: ctx
                .error
                .unwrap_or_else(|| ErrorClass::of_upstream_status(status))
                .as_str()
                .to_string(),
            key_id: ctx.done.key_id.clone(),
            api: ctx.api,
            action: ctx.action,
            model: model.to_string(),
        });
        if let Some(k) = ctx.done.key_id.as_deref() {
            let t = self.shared.anomalies.observe(
                crate::anomaly::now_ms(),
                k,
                model,
                ctx.done.total_latency.as_secs_f64() * 1e3,
                // The key's errors: server-side failures and broken streams, not the client's.
                status >= 500 || ctx.done.truncated,
                ctx.extra.upstream_429s > 0 || status == 429,
            );
            if !t.is_empty() {
                self.shared.report_anomalies(t);
            }
        }
        self.shared.stats.record(CallRecord {
            model,
            key_id: ctx.done.key_id.as_deref(),
            latency: ctx.done.total_latency,
            ttfb: ctx.done.time_to_first_byte,
            overhead: ctx
                .done
                .upstream_latency
                .map(|u| ctx.done.total_latency.saturating_sub(u)),
            tokens: ctx.done.usage.map_or(0, |u| u.total_tokens),
            error,
        });
    }
}
