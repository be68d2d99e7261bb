//! An example native plugin for gemini-proxy: routing rules compiled into a shared library and
//! loaded at start-up by the `native` stage. Build it with `cargo build -p
//! gemini-proxy-example-native --release` and point the stage at
//! `target/release/libgemini_proxy_example_native.so`:
//!
//! ```yaml
//! pipeline:
//!   - native:
//!       path: target/release/libgemini_proxy_example_native.so
//!       config: { prefer_key: key-b, deny_models: [gemini-1.0-pro], tenant_projects: { acme: proj-acme } }
//!       headers: [x-tenant]
//! ```
//!
//! What it does, to show both hooks:
//! - `route`: refuses models in `deny_models` with 410; rewrites models named in
//!   `rewrite_models`; pins the project named in
//!   `tenant_projects` for the `x-tenant` header; tags the call with `native=example`;
//! - `weigh`: chooses `prefer_key` when it is among the candidates, else leaves the weights
//!   to the configured strategy.

use gemini_proxy_sdk::hooks::{
    HookCandidate, HookError, HookRequest, RouteChange, RouteDecision, Router, WeighDecision,
};
use std::collections::BTreeMap;

/// The plugin's configuration (the stage's `config:`).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// A key id to use whenever it is eligible.
    #[serde(default)]
    pub prefer_key: Option<String>,
    /// Models refused with 410.
    #[serde(default)]
    pub deny_models: Vec<String>,
    /// `x-tenant` header value -> project whose keys serve that tenant.
    #[serde(default)]
    pub tenant_projects: BTreeMap<String, String>,
    /// Model -> the model to use instead.
    #[serde(default)]
    pub rewrite_models: BTreeMap<String, String>,
}

/// The router.
#[derive(Debug)]
pub struct ExampleRouter {
    config: Config,
}

impl ExampleRouter {
    /// Builds the router from the stage's config.
    pub fn new(config: serde_json::Value) -> Result<ExampleRouter, String> {
        let config: Config = if config.is_null() {
            Config::default()
        } else {
            serde_json::from_value(config).map_err(|e| e.to_string())?
        };
        Ok(ExampleRouter { config })
    }
}

impl Router for ExampleRouter {
    fn route(&self, req: &HookRequest) -> Result<RouteDecision, HookError> {
        if let Some(m) = &req.model
            && self.config.deny_models.iter().any(|d| d == m)
        {
            return Ok(RouteDecision::Reject {
                status: 410,
                message: format!("model {m} is retired here"),
            });
        }
        let mut change = RouteChange::default().with_tag("native", "example");
        if let Some(to) = req
            .model
            .as_ref()
            .and_then(|m| self.config.rewrite_models.get(m))
        {
            change.model = Some(to.clone());
        }
        if let Some(project) = req
            .header("x-tenant")
            .and_then(|t| self.config.tenant_projects.get(t))
        {
            change.project = Some(project.clone());
        }
        Ok(RouteDecision::Change(change))
    }

    fn weigh(
        &self,
        _req: &HookRequest,
        candidates: &[HookCandidate],
    ) -> Result<WeighDecision, HookError> {
        let Some(prefer) = &self.config.prefer_key else {
            return Ok(WeighDecision::Keep);
        };
        Ok(candidates
            .iter()
            .position(|c| &*c.id == prefer)
            .map_or(WeighDecision::Keep, WeighDecision::Choose))
    }
}

gemini_proxy_sdk::export_native_plugin!("example", ExampleRouter::new);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_without_loading() {
        let r = ExampleRouter::new(serde_json::json!({"prefer_key": "b", "deny_models": ["old"]}))
            .unwrap();
        let mut req = HookRequest::default();
        req.model = Some("old".into());
        assert!(matches!(
            r.route(&req).unwrap(),
            RouteDecision::Reject { status: 410, .. }
        ));
        let c = [HookCandidate::new("a", 1), HookCandidate::new("b", 1)];
        assert_eq!(r.weigh(&req, &c).unwrap(), WeighDecision::Choose(1));
        assert!(ExampleRouter::new(serde_json::json!({"typo": 1})).is_err());
    }
}
