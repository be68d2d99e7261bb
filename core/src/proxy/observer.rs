//! Watches response bodies on their way to the client, without holding them up: token usage,
//! finish reason, mid-stream errors, and whether a stream was cut short.

use bytes::Bytes;
use gemini_proxy_sdk::Usage;
use serde::Deserialize;

/// How the response body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// `text/event-stream`: `data: {json}` lines.
    Sse,
    /// A JSON document (object, or the JSON-array stream form).
    Json,
    /// Anything else: not observed.
    Opaque,
}

/// Largest JSON body or SSE line kept for observation; beyond it observation stops.
const MAX_OBSERVED: usize = 16 * 1024 * 1024;

#[derive(Deserialize, Default)]
struct UsageMeta {
    #[serde(rename = "promptTokenCount", default)]
    prompt: u64,
    #[serde(rename = "candidatesTokenCount", default)]
    candidates: u64,
    #[serde(rename = "thoughtsTokenCount", default)]
    thoughts: u64,
    #[serde(rename = "cachedContentTokenCount", default)]
    cached: u64,
    #[serde(rename = "totalTokenCount", default)]
    total: u64,
}

#[derive(Deserialize, Default)]
struct OaDetails {
    #[serde(default)]
    cached_tokens: u64,
    #[serde(default)]
    reasoning_tokens: u64,
}

#[derive(Deserialize, Default)]
struct OaUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    total_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<OaDetails>,
    #[serde(default)]
    completion_tokens_details: Option<OaDetails>,
}

#[derive(Deserialize)]
struct Candidate {
    #[serde(rename = "finishReason", default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Event {
    #[serde(rename = "usageMetadata", default)]
    usage_metadata: Option<UsageMeta>,
    #[serde(default)]
    candidates: Option<Vec<Candidate>>,
    #[serde(rename = "promptFeedback", default)]
    prompt_feedback: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    usage: Option<OaUsage>,
    #[serde(default)]
    choices: Option<Vec<Choice>>,
    #[serde(default)]
    error: Option<serde_json::Value>,
    /// A created resource: `files/..`, `cachedContents/..`, `batches/..`.
    #[serde(default)]
    name: Option<String>,
    /// Upload finalisation: `{"file": {"name": ...}}`.
    #[serde(default)]
    file: Option<Named>,
    /// An OpenAI-style created resource: `{"id": ..., "object": "file" | "batch"}`.
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    object: Option<String>,
    /// An ephemeral token's end of life.
    #[serde(rename = "expireTime", default)]
    expire_time: Option<String>,
}

#[derive(Deserialize)]
struct Named {
    #[serde(default)]
    name: Option<String>,
}

/// What the observer concluded once the body ended.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    pub usage: Option<Usage>,
    pub finish_reason: Option<String>,
    /// An error object inside a 2xx body (mid-stream error).
    pub midstream_error: Option<String>,
    /// A generation stream that ended without a finish reason.
    pub truncated: bool,
    pub events: u32,
    /// Name of a resource the body describes (`files/x`, `cachedContents/y`, `batches/z`).
    pub resource_name: Option<String>,
    /// An ephemeral token the body describes (`auth_tokens/...`) and its `expireTime`.
    pub auth_token: Option<(String, Option<String>)>,
}

pub struct Observer {
    format: BodyFormat,
    /// Expect a finish reason (generation calls with a 2xx status).
    expect_finish: bool,
    line: Vec<u8>,
    collected: Vec<Bytes>,
    collected_len: usize,
    overflow: bool,
    saw_done: bool,
    blocked: bool,
    out: Observed,
}

impl Observer {
    pub fn new(format: BodyFormat, expect_finish: bool) -> Observer {
        Observer {
            format,
            expect_finish,
            line: Vec::new(),
            collected: Vec::new(),
            collected_len: 0,
            overflow: false,
            saw_done: false,
            blocked: false,
            out: Observed::default(),
        }
    }

    pub fn format_for(content_type: Option<&str>) -> BodyFormat {
        let ct = content_type.unwrap_or("").to_ascii_lowercase();
        if ct.starts_with("text/event-stream") {
            BodyFormat::Sse
        } else if ct.starts_with("application/json") || ct.is_empty() {
            BodyFormat::Json
        } else {
            BodyFormat::Opaque
        }
    }

    pub fn feed(&mut self, chunk: &Bytes) {
        if self.overflow {
            return;
        }
        match self.format {
            BodyFormat::Opaque => {}
            BodyFormat::Json => {
                self.collected_len += chunk.len();
                if self.collected_len > MAX_OBSERVED {
                    self.overflow = true;
                    self.collected.clear();
                } else {
                    self.collected.push(chunk.clone());
                }
            }
            BodyFormat::Sse => {
                let mut rest: &[u8] = chunk;
                while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
                    if self.line.is_empty() {
                        self.sse_line(&rest[..nl]);
                    } else {
                        self.line.extend_from_slice(&rest[..nl]);
                        let line = std::mem::take(&mut self.line);
                        self.sse_line(&line);
                    }
                    rest = &rest[nl + 1..];
                }
                self.line.extend_from_slice(rest);
                if self.line.len() > MAX_OBSERVED {
                    self.overflow = true;
                    self.line = Vec::new();
                }
            }
        }
    }

    fn sse_line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        let data = data.strip_prefix(b" ").unwrap_or(data);
        if data == b"[DONE]" {
            self.saw_done = true;
            return;
        }
        if let Ok(ev) = serde_json::from_slice::<Event>(data) {
            self.event(ev);
        }
    }

    fn event(&mut self, ev: Event) {
        self.out.events += 1;
        let name = ev.name.or(ev.file.and_then(|f| f.name));
        if let Some(n) = name
            .as_deref()
            .filter(|n| n.starts_with(super::inbound::EPHEMERAL_PREFIX))
        {
            self.out.auth_token = Some((n.to_string(), ev.expire_time.clone()));
        }
        let key = name
            .as_deref()
            .and_then(super::tenancy::resource_key)
            .or_else(|| {
                let item = serde_json::json!({"id": ev.id?, "object": ev.object});
                super::tenancy::member_key(&item)
            });
        if key.is_some() {
            self.out.resource_name = key;
        }
        if let Some(u) = ev.usage_metadata {
            self.out.usage = Some(Usage {
                prompt_tokens: u.prompt,
                candidates_tokens: u.candidates,
                thoughts_tokens: u.thoughts,
                cached_tokens: u.cached,
                total_tokens: u.total,
            });
        }
        if let Some(u) = ev.usage {
            self.out.usage = Some(Usage {
                prompt_tokens: u.prompt_tokens,
                candidates_tokens: u.completion_tokens,
                thoughts_tokens: u
                    .completion_tokens_details
                    .map(|d| d.reasoning_tokens)
                    .unwrap_or(0),
                cached_tokens: u
                    .prompt_tokens_details
                    .map(|d| d.cached_tokens)
                    .unwrap_or(0),
                total_tokens: u.total_tokens,
            });
        }
        let reasons = ev
            .candidates
            .into_iter()
            .flatten()
            .filter_map(|c| c.finish_reason)
            .chain(
                ev.choices
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c.finish_reason),
            );
        for r in reasons {
            self.out.finish_reason = Some(r);
        }
        if ev.prompt_feedback.is_some() {
            self.blocked = true;
        }
        if let Some(e) = ev.error {
            let msg = e
                .get("message")
                .and_then(|m| m.as_str())
                .unwrap_or("error")
                .to_string();
            let status = e.get("status").and_then(|m| m.as_str()).unwrap_or("");
            self.out.midstream_error = Some(if status.is_empty() {
                msg
            } else {
                format!("{status}: {msg}")
            });
        }
    }

    /// Ends observation. `complete` is false if the body was cut by a transport error.
    pub fn finish(mut self, complete: bool) -> Observed {
        if self.format == BodyFormat::Json && !self.overflow && !self.collected.is_empty() {
            let mut all = Vec::with_capacity(self.collected_len);
            for c in &self.collected {
                all.extend_from_slice(c);
            }
            // Parse straight into the few fields we need, once.
            match all.iter().find(|b| !b.is_ascii_whitespace()) {
                Some(b'[') => {
                    if let Ok(events) = serde_json::from_slice::<Vec<Event>>(&all) {
                        events.into_iter().for_each(|ev| self.event(ev));
                    }
                }
                Some(b'{') => {
                    if let Ok(ev) = serde_json::from_slice::<Event>(&all) {
                        self.event(ev);
                    }
                }
                _ => {}
            }
        }
        if self.format == BodyFormat::Sse && !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.sse_line(&line);
        }
        let finished = self.out.finish_reason.is_some() || self.saw_done || self.blocked;
        self.out.truncated = !self.overflow
            && self.format != BodyFormat::Opaque
            && self.expect_finish
            && self.out.midstream_error.is_none()
            && (!complete || !finished);
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(format: BodyFormat, chunks: &[&str], complete: bool) -> Observed {
        let mut o = Observer::new(format, true);
        for c in chunks {
            o.feed(&Bytes::from(c.to_string()));
        }
        o.finish(complete)
    }

    const E1: &str = r#"data: {"candidates": [{"content": {"parts": [{"text": "Hi"}],"role": "model"},"index": 0}],"usageMetadata": {"promptTokenCount": 5,"candidatesTokenCount": 12,"totalTokenCount": 203,"thoughtsTokenCount": 186}}"#;
    const E2: &str = r#"data: {"candidates": [{"content": {"parts": [{"text": "Hola"}],"role": "model"},"finishReason": "STOP","index": 0}],"usageMetadata": {"promptTokenCount": 5,"candidatesTokenCount": 20,"totalTokenCount": 211,"thoughtsTokenCount": 186}}"#;

    #[test]
    fn sse_takes_last_cumulative_usage_across_split_chunks() {
        let body = format!("{E1}\r\n\r\n{E2}\r\n\r\n");
        let (a, b) = body.split_at(37);
        let (b, c) = b.split_at(200);
        let o = run(BodyFormat::Sse, &[a, b, c], true);
        assert_eq!(o.usage.unwrap().candidates_tokens, 20);
        assert_eq!(o.usage.unwrap().total_tokens, 211);
        assert_eq!(o.finish_reason.as_deref(), Some("STOP"));
        assert!(!o.truncated);
        assert_eq!(o.events, 2);
    }

    #[test]
    fn sse_without_finish_reason_is_truncated() {
        let o = run(BodyFormat::Sse, &[&format!("{E1}\r\n\r\n")], true);
        assert!(o.truncated);
        let o = run(
            BodyFormat::Sse,
            &[&format!("{E1}\r\n\r\n{E2}\r\n\r\n")],
            false,
        );
        assert!(o.truncated, "a transport error mid-body is truncation");
    }

    #[test]
    fn midstream_error_is_reported() {
        let err = r#"data: {"error": {"code": 500, "message": "boom", "status": "INTERNAL"}}"#;
        let o = run(
            BodyFormat::Sse,
            &[&format!("{E1}\r\n\r\n{err}\r\n\r\n")],
            true,
        );
        assert_eq!(o.midstream_error.as_deref(), Some("INTERNAL: boom"));
        assert!(!o.truncated);
    }

    #[test]
    fn openai_stream_with_done() {
        let c1 = r#"data: {"choices":[{"delta":{"content":"1"},"index":0}],"usage":{"completion_tokens":1,"prompt_tokens":9,"total_tokens":103}}"#;
        let c2 = r#"data: {"choices":[{"delta":{},"finish_reason":"stop","index":0}],"usage":{"completion_tokens":3,"prompt_tokens":9,"total_tokens":105}}"#;
        let o = run(
            BodyFormat::Sse,
            &[&format!("{c1}\n\n{c2}\n\ndata: [DONE]\n\n")],
            true,
        );
        assert_eq!(o.usage.unwrap().total_tokens, 105);
        assert_eq!(o.finish_reason.as_deref(), Some("stop"));
        assert!(!o.truncated);
        let o = run(BodyFormat::Sse, &[&format!("{c1}\n\n")], true);
        assert!(o.truncated);
    }

    #[test]
    fn json_array_stream_and_plain_json() {
        let arr = "[{\"candidates\": [{\"index\": 0}], \"usageMetadata\": {\"promptTokenCount\": 3, \"totalTokenCount\": 4}}\n,\r\n{\"candidates\": [{\"finishReason\": \"STOP\"}], \"usageMetadata\": {\"promptTokenCount\": 3, \"candidatesTokenCount\": 2, \"totalTokenCount\": 5}}\n]";
        let (a, b) = arr.split_at(50);
        let o = run(BodyFormat::Json, &[a, b], true);
        assert_eq!(o.usage.unwrap().total_tokens, 5);
        assert!(!o.truncated);
        let cut = &arr[..arr.len() - 2];
        assert!(run(BodyFormat::Json, &[cut], true).truncated);
        let one = r#"{"candidates":[{"finishReason":"MAX_TOKENS"}],"usageMetadata":{"promptTokenCount":7,"candidatesTokenCount":149,"thoughtsTokenCount":48,"totalTokenCount":204}}"#;
        let o = run(BodyFormat::Json, &[one], true);
        assert_eq!(o.usage.unwrap().thoughts_tokens, 48);
        let blocked = r#"{"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 12, "totalTokenCount": 12}}"#;
        assert!(!run(BodyFormat::Json, &[blocked], true).truncated);
    }
}
