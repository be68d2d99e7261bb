//! The compiled pipeline: stages in YAML order, split per phase, with each entry's generic
//! `failure_mode` and `when:` condition applied by the runtime rather than by each plugin.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use gemini_proxy_sdk::{
    Admission, ApiKind, BuildEnv, CompletedRequest, FailureMode, Phases, Plugin, PluginError,
    Registry, Rejection, RequestContext, ResponseHead, Selection, UpstreamOutcome,
};
use serde::Deserialize;
use serde_yaml::Value;

use crate::config::ConfigError;

/// The pipeline used when the config has no `pipeline:` list.
///
/// `request_log` is not in it: a formatted log line per call cost ~15 µs of CPU (a third of the
/// whole call) in `scripts/bench`; add it when a per-call log line is wanted.
pub fn default_pipeline() -> Vec<Value> {
    ["key_select"]
        .iter()
        .map(|s| Value::String(s.to_string()))
        .collect()
}

/// A condition on the request; every given field must match.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct When {
    #[serde(default)]
    pub path_prefix: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub api: Vec<ApiName>,
    /// Model globs (`*` matches any run of characters).
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default)]
    pub header: Option<HeaderCondition>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ApiName {
    Native,
    Openai,
    Upload,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderCondition {
    pub name: String,
    #[serde(default)]
    pub equals: Option<String>,
}

pub use gemini_proxy_sdk::glob_match;

impl When {
    pub fn matches(&self, cx: &RequestContext) -> bool {
        let r = &cx.request;
        if !self.path_prefix.is_empty()
            && !self
                .path_prefix
                .iter()
                .any(|p| r.path.starts_with(p.as_str()))
        {
            return false;
        }
        if !self.methods.is_empty()
            && !self
                .methods
                .iter()
                .any(|m| m.eq_ignore_ascii_case(r.method.as_str()))
        {
            return false;
        }
        if !self.api.is_empty() {
            let name = match r.api_kind {
                ApiKind::OpenAi => ApiName::Openai,
                ApiKind::Upload => ApiName::Upload,
                _ => ApiName::Native,
            };
            if !self.api.contains(&name) {
                return false;
            }
        }
        if !self.models.is_empty() {
            let Some(model) = r.model.as_deref() else {
                return false;
            };
            if !self.models.iter().any(|g| glob_match(g, model)) {
                return false;
            }
        }
        if let Some(h) = &self.header {
            match (r.headers.get(h.name.as_str()), &h.equals) {
                (None, _) => return false,
                (Some(v), Some(want)) if v.as_bytes() != want.as_bytes() => return false,
                _ => {}
            }
        }
        true
    }
}

/// One built pipeline entry.
pub struct Stage {
    pub kind: String,
    pub plugin: Arc<dyn Plugin>,
    pub failure_mode: FailureMode,
    pub when: Option<When>,
}

impl Stage {
    fn applies(&self, cx: &RequestContext) -> bool {
        self.when.as_ref().is_none_or(|w| w.matches(cx))
    }

    fn mode_for(&self, e: &PluginError) -> FailureMode {
        e.mode.unwrap_or(self.failure_mode)
    }
}

/// A failed stage whose failure mode is `closed`: the call fails.
#[derive(Debug, Clone, thiserror::Error)]
#[error("pipeline stage `{stage}` failed in {phase}: {message}")]
pub struct StageFailure {
    pub stage: String,
    pub phase: &'static str,
    pub message: String,
}

/// Stages by phase, each list in YAML order.
#[derive(Default)]
pub struct Pipeline {
    pub stages: Vec<Arc<Stage>>,
    admit: Vec<Arc<Stage>>,
    body: Vec<Arc<Stage>>,
    select: Vec<Arc<Stage>>,
    upstream: Vec<Arc<Stage>>,
    response: Vec<Arc<Stage>>,
    complete: Vec<Arc<Stage>>,
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .map(|s| format!("panicked: {s}"))
        .unwrap_or_else(|| "panicked".into())
}

impl Pipeline {
    /// Builds the entries of a `pipeline:` list. Errors carry `pipeline[i].kind...` paths.
    pub fn build(
        entries: &[Value],
        registry: &Registry,
        env: &BuildEnv,
        file: &str,
    ) -> Result<Pipeline, ConfigError> {
        let mut p = Pipeline::default();
        for (i, entry) in entries.iter().enumerate() {
            let (kind, mut body) = match entry {
                Value::String(k) => (k.clone(), Value::Null),
                Value::Mapping(m) if m.len() == 1 => {
                    let (k, v) = m.iter().next().expect("len 1");
                    let k = k.as_str().ok_or_else(|| {
                        ConfigError::new(
                            file,
                            format!("pipeline[{i}]"),
                            "stage name must be a string",
                        )
                    })?;
                    (k.to_string(), v.clone())
                }
                _ => {
                    return Err(ConfigError::new(
                        file,
                        format!("pipeline[{i}]"),
                        "each entry is `- kind: {config}` (one key) or `- kind`",
                    ));
                }
            };
            let path = format!("pipeline[{i}].{kind}");
            if body.is_null() {
                body = Value::Mapping(Default::default());
            }
            let Value::Mapping(map) = &mut body else {
                return Err(ConfigError::new(
                    file,
                    path,
                    "stage config must be a mapping",
                ));
            };
            let failure_mode: FailureMode = match map.remove("failure_mode") {
                Some(v) => serde_yaml::from_value(v).map_err(|e| {
                    ConfigError::new(
                        file,
                        format!("{path}.failure_mode"),
                        format!("{e} (use open or closed)"),
                    )
                })?,
                None => FailureMode::Closed,
            };
            let when: Option<When> = match map.remove("when") {
                Some(v) => Some(serde_path_to_error::deserialize(v).map_err(|e| {
                    let sub = e.path().to_string();
                    let at = if sub == "." {
                        format!("{path}.when")
                    } else {
                        format!("{path}.when.{sub}")
                    };
                    ConfigError::new(file, at, e.inner().to_string())
                })?),
                None => None,
            };
            let json = serde_json::to_value(&body).map_err(|e| {
                ConfigError::new(file, path.clone(), format!("cannot convert config: {e}"))
            })?;
            let plugin = registry.build(&kind, json, env).map_err(|e| match e {
                gemini_proxy_sdk::BuildError::InvalidConfig { path: sub, message } => {
                    let at = if sub == "." {
                        path.clone()
                    } else {
                        format!("{path}.{sub}")
                    };
                    ConfigError::new(file, at, message)
                }
                other => ConfigError::new(file, path.clone(), other.to_string()),
            })?;
            p.push(Stage {
                kind,
                plugin,
                failure_mode,
                when,
            });
        }
        Ok(p)
    }

    pub fn push(&mut self, stage: Stage) {
        let stage = Arc::new(stage);
        let phases = stage.plugin.phases();
        for (phase, list) in [
            (Phases::ADMIT, &mut self.admit),
            (Phases::BODY, &mut self.body),
            (Phases::SELECT, &mut self.select),
            (Phases::UPSTREAM, &mut self.upstream),
            (Phases::RESPONSE, &mut self.response),
            (Phases::COMPLETE, &mut self.complete),
        ] {
            if phases.contains(phase) {
                list.push(stage.clone());
            }
        }
        self.stages.push(stage);
    }

    pub fn has_response_observers(&self) -> bool {
        !self.response.is_empty()
    }

    /// Handles a stage error: `Err` when the call must fail, `Ok` to go on.
    fn on_error(stage: &Stage, phase: &'static str, e: PluginError) -> Result<(), StageFailure> {
        crate::metrics::global_stage_error(&stage.kind, phase);
        match stage.mode_for(&e) {
            FailureMode::Open => {
                tracing::warn!(stage = %stage.kind, phase, error = %e.message, "pipeline stage failed; failure_mode open, continuing");
                Ok(())
            }
            FailureMode::Closed => Err(StageFailure {
                stage: stage.kind.clone(),
                phase,
                message: e.message,
            }),
        }
    }

    /// Admission: first rejection wins.
    pub async fn admit(&self, cx: &mut RequestContext) -> Result<Option<Rejection>, StageFailure> {
        for stage in &self.admit {
            if !stage.applies(cx) {
                continue;
            }
            let r = AssertUnwindSafe(stage.plugin.on_admit(cx))
                .catch_unwind()
                .await;
            match r {
                Ok(Ok(Admission::Continue)) => {}
                Ok(Ok(Admission::Reject(rej))) => return Ok(Some(rej)),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => Self::on_error(stage, "admit", e)?,
                Err(p) => Self::on_error(stage, "admit", PluginError::new(panic_message(p)))?,
            }
        }
        Ok(None)
    }

    /// The body phase (after a buffered body is read): first rejection wins.
    pub async fn body(
        &self,
        cx: &mut RequestContext,
        body: &[u8],
    ) -> Result<Option<Rejection>, StageFailure> {
        for stage in &self.body {
            if !stage.applies(cx) {
                continue;
            }
            let r = AssertUnwindSafe(stage.plugin.on_body(cx, body))
                .catch_unwind()
                .await;
            match r {
                Ok(Ok(Admission::Reject(rej))) => return Ok(Some(rej)),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => Self::on_error(stage, "body", e)?,
                Err(p) => Self::on_error(stage, "body", PluginError::new(panic_message(p)))?,
            }
        }
        Ok(None)
    }

    /// Selection: stops at the first stage that chooses a key.
    pub fn select(&self, cx: &RequestContext, sel: &mut Selection<'_>) -> Result<(), StageFailure> {
        for stage in &self.select {
            if sel.chosen().is_some() {
                break;
            }
            if !stage.applies(cx) {
                continue;
            }
            match std::panic::catch_unwind(AssertUnwindSafe(|| stage.plugin.on_select(cx, sel))) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => Self::on_error(stage, "select", e)?,
                Err(p) => Self::on_error(stage, "select", PluginError::new(panic_message(p)))?,
            }
        }
        Ok(())
    }

    pub fn upstream_outcome(
        &self,
        cx: &RequestContext,
        outcome: &UpstreamOutcome,
    ) -> Result<(), StageFailure> {
        for stage in &self.upstream {
            if !stage.applies(cx) {
                continue;
            }
            match std::panic::catch_unwind(AssertUnwindSafe(|| {
                stage.plugin.on_upstream_response(cx, outcome)
            })) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => Self::on_error(stage, "upstream", e)?,
                Err(p) => Self::on_error(stage, "upstream", PluginError::new(panic_message(p)))?,
            }
        }
        Ok(())
    }

    pub fn response(
        &self,
        cx: &mut RequestContext,
        head: &ResponseHead,
    ) -> Result<(), StageFailure> {
        for stage in &self.response {
            if !stage.applies(cx) {
                continue;
            }
            match std::panic::catch_unwind(AssertUnwindSafe(|| stage.plugin.on_response(cx, head)))
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => Self::on_error(stage, "response", e)?,
                Err(p) => Self::on_error(stage, "response", PluginError::new(panic_message(p)))?,
            }
        }
        Ok(())
    }

    pub fn response_chunk(&self, cx: &mut RequestContext, chunk: &[u8]) {
        for stage in &self.response {
            if stage.applies(cx)
                && std::panic::catch_unwind(AssertUnwindSafe(|| {
                    stage.plugin.on_response_chunk(cx, chunk)
                }))
                .is_err()
            {
                crate::metrics::global_stage_error(&stage.kind, "response_chunk");
            }
        }
    }

    pub fn complete(&self, cx: &RequestContext, done: &CompletedRequest) {
        for stage in &self.complete {
            if stage.applies(cx)
                && std::panic::catch_unwind(AssertUnwindSafe(|| stage.plugin.on_complete(cx, done)))
                    .is_err()
            {
                crate::metrics::global_stage_error(&stage.kind, "complete");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gemini_proxy_sdk::{Candidate, PluginFactory, testing};
    use parking_lot::Mutex;

    /// Records every hook call as "name:phase" in a shared log.
    struct Recorder {
        name: String,
        log: Arc<Mutex<Vec<String>>>,
        reject: bool,
        fail: bool,
        choose: Option<String>,
    }

    #[async_trait::async_trait]
    impl Plugin for Recorder {
        fn name(&self) -> &str {
            &self.name
        }
        fn phases(&self) -> Phases {
            Phases::ALL
        }
        async fn on_admit(&self, _cx: &mut RequestContext) -> Result<Admission, PluginError> {
            self.log.lock().push(format!("{}:admit", self.name));
            if self.fail {
                return Err(PluginError::new("boom"));
            }
            if self.reject {
                return Ok(Admission::Reject(Rejection::new(
                    403,
                    format!("{} says no", self.name),
                )));
            }
            Ok(Admission::Continue)
        }
        fn on_select(
            &self,
            _cx: &RequestContext,
            sel: &mut Selection<'_>,
        ) -> Result<(), PluginError> {
            self.log.lock().push(format!("{}:select", self.name));
            if let Some(id) = &self.choose {
                sel.choose_id(id);
            }
            Ok(())
        }
        fn on_complete(&self, _cx: &RequestContext, _done: &CompletedRequest) {
            self.log.lock().push(format!("{}:complete", self.name));
        }
    }

    static LOG: std::sync::OnceLock<Arc<Mutex<Vec<String>>>> = std::sync::OnceLock::new();

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RecCfg {
        name: String,
        #[serde(default)]
        reject: bool,
        #[serde(default)]
        fail: bool,
        #[serde(default)]
        choose: Option<String>,
    }

    impl PluginFactory for Recorder {
        const KIND: &'static str = "recorder";
        type Config = RecCfg;
        fn build(c: RecCfg, _env: &BuildEnv) -> Result<Arc<dyn Plugin>, PluginError> {
            Ok(Arc::new(Recorder {
                name: c.name,
                log: LOG.get_or_init(Default::default).clone(),
                reject: c.reject,
                fail: c.fail,
                choose: c.choose,
            }))
        }
    }

    fn build(yaml: &str) -> Result<Pipeline, ConfigError> {
        let mut reg = gemini_proxy_plugins::builtin_registry();
        reg.register::<Recorder>();
        let entries: Vec<Value> = serde_yaml::from_str(yaml).unwrap();
        Pipeline::build(&entries, &reg, &BuildEnv::default(), "test.yaml")
    }

    /// The ordering contract: within each phase stages run in YAML order, the first rejection
    /// stops admission, the first choice stops selection, and `when:` skips a stage.
    #[test]
    fn ordering_contract() {
        let _guard = SERIAL.lock();
        let log = LOG.get_or_init(Default::default).clone();
        log.lock().clear();
        let p = build(
            r#"
- recorder: {name: a}
- recorder: {name: skipped, when: {models: ["gemini-1*"]}}
- recorder: {name: b, choose: k2}
- recorder: {name: c, choose: k1}
"#,
        )
        .unwrap();
        let mut cx = testing::request("POST", "/v1beta/models/gemini-2.5-flash:generateContent");
        assert!(testing::block_on(p.admit(&mut cx)).unwrap().is_none());
        let cands = [Candidate::new("k1", 1), Candidate::new("k2", 1)];
        let mut sel = Selection::new(&cands);
        p.select(&cx, &mut sel).unwrap();
        assert_eq!(sel.chosen().map(|c| &*c.id), Some("k2"));
        p.complete(&cx, &CompletedRequest::default());
        assert_eq!(
            *log.lock(),
            [
                "a:admit",
                "b:admit",
                "c:admit",
                "a:select",
                "b:select",
                "a:complete",
                "b:complete",
                "c:complete"
            ]
        );

        log.lock().clear();
        let p =
            build("- recorder: {name: first, reject: true}\n- recorder: {name: second}\n").unwrap();
        let mut cx = testing::request("GET", "/v1beta/models");
        let rej = testing::block_on(p.admit(&mut cx)).unwrap().unwrap();
        assert_eq!(rej.message, "first says no");
        assert_eq!(*log.lock(), ["first:admit"]);
    }

    static SERIAL: Mutex<()> = Mutex::new(());

    #[test]
    fn failure_modes() {
        let _guard = SERIAL.lock();
        let p = build("- recorder: {name: x, fail: true}\n- recorder: {name: y, reject: true}\n")
            .unwrap();
        let mut cx = testing::request("GET", "/v1beta/models");
        let e = testing::block_on(p.admit(&mut cx)).unwrap_err();
        assert_eq!((e.stage.as_str(), e.phase), ("recorder", "admit"));
        let p = build("- recorder: {name: x, fail: true, failure_mode: open}\n- recorder: {name: y, reject: true}\n").unwrap();
        let rej = testing::block_on(p.admit(&mut cx)).unwrap().unwrap();
        assert_eq!(rej.message, "y says no");
    }

    #[test]
    fn entry_errors_carry_paths() {
        let e = build("- key_select: {strategy: nope}").err().unwrap();
        assert_eq!(e.path, "pipeline[0].key_select.strategy");
        let e = build("- request_log\n- nosuch: {}").err().unwrap();
        assert_eq!(e.path, "pipeline[1].nosuch");
        assert!(e.message.contains("unknown plugin kind"), "{e}");
        let e = build("- key_select: {failure_mode: sideways}")
            .err()
            .unwrap();
        assert_eq!(e.path, "pipeline[0].key_select.failure_mode");
        let e = build("- key_select: {when: {modelz: [x]}}").err().unwrap();
        assert!(
            e.path.starts_with("pipeline[0].key_select.when"),
            "{}",
            e.path
        );
        let e = build("- {a: {}, b: {}}").err().unwrap();
        assert_eq!(e.path, "pipeline[0]");
    }

    #[test]
    fn globs() {
        assert!(glob_match("gemini-2.5-*", "gemini-2.5-flash"));
        assert!(glob_match("*flash*", "gemini-2.5-flash-lite"));
        assert!(!glob_match("gemini-2.5-*", "gemini-3-pro"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("a*b", "ac"));
    }
}
