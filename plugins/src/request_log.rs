//! `request_log`: one structured log line per finished call (ids and numbers, never secrets).

use std::sync::Arc;

use gemini_proxy_sdk::{
    BuildEnv, CompletedRequest, Phases, Plugin, PluginError, PluginFactory, RequestContext,
};
use serde::Deserialize;

/// Log level of the line.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// `INFO`
    #[default]
    Info,
    /// `DEBUG`
    Debug,
}

/// Config of the `request_log` stage.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RequestLogConfig {
    /// Level of the per-call line.
    #[serde(default)]
    pub level: Level,
}

/// The `request_log` stage.
pub struct RequestLog {
    level: Level,
}

impl Plugin for RequestLog {
    fn name(&self) -> &str {
        "request_log"
    }

    fn phases(&self) -> Phases {
        Phases::COMPLETE
    }

    fn on_complete(&self, cx: &RequestContext, done: &CompletedRequest) {
        let r = &cx.request;
        let usage = done.usage.unwrap_or_default();
        macro_rules! line {
            ($lvl:ident) => {
                tracing::$lvl!(
                    target: "gemini_proxy::request",
                    request_id = %r.request_id,
                    method = %r.method,
                    path = %r.path,
                    api = r.api_kind.as_str(),
                    action = r.action.as_str(),
                    model = r.model.as_deref().unwrap_or("-"),
                    user = cx.identity.as_ref().map(|i| i.subject.as_str()).unwrap_or("-"),
                    status = done.status,
                    upstream_status = done.upstream_status,
                    key_id = done.key_id.as_deref().unwrap_or("-"),
                    attempts = done.attempts,
                    latency_ms = done.total_latency.as_secs_f64() * 1000.0,
                    ttfb_ms = done.time_to_first_byte.map(|d| d.as_secs_f64() * 1000.0).unwrap_or(-1.0),
                    prompt_tokens = usage.prompt_tokens,
                    total_tokens = usage.total_tokens,
                    truncated = done.truncated,
                    error = done.error_class.as_deref().unwrap_or("-"),
                    "request"
                )
            };
        }
        match self.level {
            Level::Info => line!(info),
            Level::Debug => line!(debug),
        }
    }
}

impl PluginFactory for RequestLog {
    const KIND: &'static str = "request_log";
    type Config = RequestLogConfig;

    fn build(config: RequestLogConfig, _env: &BuildEnv) -> Result<Arc<dyn Plugin>, PluginError> {
        Ok(Arc::new(RequestLog {
            level: config.level,
        }))
    }
}
