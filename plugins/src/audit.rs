//! `audit`: tags each call's audit record with allowlisted request headers and fixed labels,
//! so analysts can group usage by tenant, team or cost centre. The record itself is written by
//! the gateway for every call whether or not this stage is listed: removing it from a pipeline
//! removes tags, never records.
//!
//! ```yaml
//! pipeline:
//!   - audit: { tag_headers: [x-tenant, x-cost-center], tags: { env: prod } }
//!   - key_select
//! ```

use std::sync::Arc;

use gemini_proxy_sdk::{
    Admission, BuildEnv, Phases, Plugin, PluginError, PluginFactory, RequestContext,
};
use serde::Deserialize;

/// Longest tag value kept (longer values are cut at a character boundary).
pub const MAX_VALUE_LEN: usize = 128;
/// Most headers one stage may copy.
pub const MAX_TAG_HEADERS: usize = 16;

/// Config of the `audit` stage.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AuditStageConfig {
    /// Request headers copied into the record as tags (the tag is the header name without an
    /// `x-` prefix). Credentials can never be listed.
    #[serde(default)]
    pub tag_headers: Vec<String>,
    /// Fixed tags added to every record this stage sees (e.g. `env: prod`).
    #[serde(default)]
    pub tags: std::collections::BTreeMap<String, String>,
}

/// The `audit` stage.
pub struct AuditStage {
    headers: Vec<(http::HeaderName, String)>,
    tags: Vec<(String, String)>,
}

/// Headers that carry credentials or cookies: never copied into a record.
const REFUSED: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "x-goog-api-key",
    "cookie",
    "set-cookie",
    "x-goog-upload-url",
];

fn tag_name(header: &str) -> String {
    header
        .strip_prefix("x-")
        .unwrap_or(header)
        .replace('-', "_")
}

fn cut(v: &str) -> String {
    gemini_proxy_sdk::prefix_within(v, MAX_VALUE_LEN).to_string()
}

#[gemini_proxy_sdk::async_trait]
impl Plugin for AuditStage {
    fn name(&self) -> &str {
        "audit"
    }

    fn phases(&self) -> Phases {
        Phases::ADMIT
    }

    async fn on_admit(&self, cx: &mut RequestContext) -> Result<Admission, PluginError> {
        for (k, v) in &self.tags {
            cx.tags.insert(k.clone(), v.clone());
        }
        for (h, tag) in &self.headers {
            if let Some(v) = cx
                .request
                .headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
            {
                cx.tags.insert(tag.clone(), cut(v));
            }
        }
        Ok(Admission::Continue)
    }
}

impl PluginFactory for AuditStage {
    const KIND: &'static str = "audit";
    type Config = AuditStageConfig;

    fn build(config: AuditStageConfig, _env: &BuildEnv) -> Result<Arc<dyn Plugin>, PluginError> {
        if config.tag_headers.len() > MAX_TAG_HEADERS {
            return Err(PluginError::new(format!(
                "tag_headers: at most {MAX_TAG_HEADERS} headers"
            )));
        }
        let mut headers = Vec::new();
        for h in &config.tag_headers {
            let lower = h.to_ascii_lowercase();
            if REFUSED.contains(&lower.as_str()) {
                return Err(PluginError::new(format!(
                    "tag_headers: `{h}` carries credentials and is never recorded"
                )));
            }
            let name = http::HeaderName::from_bytes(lower.as_bytes()).map_err(|_| {
                PluginError::new(format!("tag_headers: `{h}` is not a header name"))
            })?;
            headers.push((name, tag_name(&lower)));
        }
        let tags = config.tags.into_iter().map(|(k, v)| (k, cut(&v))).collect();
        Ok(Arc::new(AuditStage { headers, tags }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(json: &str) -> Result<Arc<dyn Plugin>, PluginError> {
        let c: AuditStageConfig = serde_json::from_str(json).unwrap();
        AuditStage::build(c, &BuildEnv::default())
    }

    #[tokio::test]
    async fn copies_allowlisted_headers_and_fixed_tags() {
        let s = stage(r#"{"tag_headers": ["X-Tenant", "x-cost-center"], "tags": {"env": "prod"}}"#)
            .unwrap();
        let mut cx = gemini_proxy_sdk::testing::request("POST", "/v1beta/models/m:generateContent");
        cx.request
            .headers
            .insert("x-tenant", "acme".parse().unwrap());
        cx.request
            .headers
            .insert("x-other", "not copied".parse().unwrap());
        cx.request
            .headers
            .insert("x-cost-center", "c".repeat(300).parse().unwrap());
        s.on_admit(&mut cx).await.unwrap();
        assert_eq!(cx.tags["tenant"], "acme");
        assert_eq!(cx.tags["env"], "prod");
        assert_eq!(cx.tags["cost_center"].len(), MAX_VALUE_LEN);
        assert!(!cx.tags.contains_key("other"));
    }

    #[test]
    fn refuses_credential_headers() {
        for h in ["authorization", "X-Goog-Api-Key", "cookie"] {
            let e = stage(&format!(r#"{{"tag_headers": ["{h}"]}}"#))
                .err()
                .unwrap();
            assert!(e.to_string().contains("credentials"), "{e}");
        }
    }
}
