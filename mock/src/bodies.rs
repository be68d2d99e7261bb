//! Response and error bodies of the mock, shaped like Google's: `candidates`
//! with `usageMetadata`, and errors as `{"error": {code, message, status, details}}`.

use serde_json::{Value, json};

pub fn err_key_invalid() -> Value {
    json!({"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.", "status": "INVALID_ARGUMENT",
        "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com",
                     "metadata": {"service": "generativelanguage.googleapis.com"}},
                    {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US",
                     "message": "API key not valid. Please pass a valid API key."}]}})
}

pub fn err_leaked() -> Value {
    json!({"error": {"code": 403, "message": "Your API key was reported as leaked. Please use another API key.", "status": "PERMISSION_DENIED"}})
}

/// Google names the caller's whole key in this one, in the message and the metadata.
pub fn err_suspended(key: &str) -> Value {
    json!({"error": {"code": 403, "message": format!("Permission denied: Consumer 'api_key:{key}' has been suspended."), "status": "PERMISSION_DENIED",
        "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "CONSUMER_SUSPENDED", "domain": "googleapis.com",
                     "metadata": {"service": "generativelanguage.googleapis.com", "consumer": "projects/578829824020",
                                  "containerInfo": format!("api_key:{key}")}}]}})
}

pub fn err_unregistered() -> Value {
    json!({"error": {"code": 403, "message": "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.", "status": "PERMISSION_DENIED"}})
}

pub fn err_unauthenticated() -> Value {
    json!({"error": {"code": 401, "message": "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.", "status": "UNAUTHENTICATED"}})
}

fn quota(
    metric: &str,
    quota_id: &str,
    model: &str,
    limit: u64,
    delay: &str,
    msg_limit: bool,
) -> Value {
    let mut message = "You exceeded your current quota, please check your plan and billing details. For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.".to_string();
    if msg_limit {
        message.push_str(&format!("\n* Quota exceeded for metric: {metric}, limit: {limit}, model: {model}\nPlease retry in {delay}."));
    }
    json!({"error": {"code": 429, "message": message, "status": "RESOURCE_EXHAUSTED",
        "details": [
            {"@type": "type.googleapis.com/google.rpc.Help", "links": [{"description": "Learn more about Gemini API quotas", "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]},
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaMetric": metric, "quotaId": quota_id,
                "quotaDimensions": {"model": model, "location": "global"}, "quotaValue": limit.to_string()}]},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}]}})
}

pub fn err_quota_minute(model: &str, limit: u64, delay: &str) -> Value {
    quota(
        "generativelanguage.googleapis.com/generate_content_free_tier_requests",
        "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
        model,
        limit,
        delay,
        false,
    )
}

pub fn err_quota_day(model: &str, limit: u64, delay: &str) -> Value {
    quota(
        "generativelanguage.googleapis.com/generate_content_free_tier_requests",
        "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
        model,
        limit,
        delay,
        true,
    )
}

pub fn err_quota_zero(model: &str) -> Value {
    quota(
        "generativelanguage.googleapis.com/generate_content_free_tier_requests",
        "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
        model,
        0,
        "10s",
        true,
    )
}

pub fn err_bare_429() -> Value {
    json!({"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).", "status": "RESOURCE_EXHAUSTED"}})
}

pub fn err_overloaded() -> Value {
    json!({"error": {"code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}})
}

pub fn err_internal() -> Value {
    json!({"error": {"code": 500, "message": "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting", "status": "INTERNAL"}})
}

pub fn err_model_not_found(model: &str) -> Value {
    json!({"error": {"code": 404, "message": format!("models/{model} is not found for API version v1beta, or is not supported for generateContent. Call ListModels to see the list of available models and their supported methods."), "status": "NOT_FOUND"}})
}

/// All prompt text in a native or OpenAI request body.
pub fn prompt_text(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, val) in m {
                    match (k.as_str(), val) {
                        ("text", Value::String(s)) => out.push(s.clone()),
                        ("content", Value::String(s)) => out.push(s.clone()),
                        ("input", Value::String(s)) => out.push(s.clone()),
                        _ => walk(val, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(&v, &mut out);
    out.join(" ")
}

pub fn tokens(s: &str) -> u64 {
    (s.len() as u64).div_ceil(4).max(1)
}

fn thinking(model: &str) -> u64 {
    if model.contains("2.5") || model.contains("-3") {
        8
    } else {
        0
    }
}

fn usage(prompt: u64, cand: u64, thoughts: u64) -> Value {
    let mut u = json!({"promptTokenCount": prompt, "totalTokenCount": prompt + cand + thoughts,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}]});
    if cand > 0 {
        u["candidatesTokenCount"] = json!(cand);
    }
    if thoughts > 0 {
        u["thoughtsTokenCount"] = json!(thoughts);
    }
    u
}

pub fn generate_response(model: &str, body: &[u8]) -> Value {
    let prompt = prompt_text(body);
    let pt = tokens(&prompt);
    let model = model.strip_prefix("models/").unwrap_or(model);
    match model {
        "mock-empty" => {
            json!({"candidates": [{"content": {"role": "model"}, "finishReason": "MAX_TOKENS", "index": 0}],
            "usageMetadata": {"promptTokenCount": pt, "totalTokenCount": pt + 19, "thoughtsTokenCount": 19},
            "modelVersion": model, "responseId": "mockEmpty0001"})
        }
        "mock-blocked" => json!({"promptFeedback": {"blockReason": "SAFETY",
            "safetyRatings": [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"}]},
            "usageMetadata": {"promptTokenCount": pt, "totalTokenCount": pt}, "modelVersion": model, "responseId": "mockBlocked0001"}),
        "mock-fc" => {
            json!({"candidates": [{"content": {"parts": [{"functionCall": {"args": {"denominator": 2, "numerator": 100}, "name": "customDivide"}}], "role": "model"}, "finishReason": "STOP"}],
            "modelVersion": model, "responseId": "mockFc0001", "usageMetadata": usage(pt, 6, 0)})
        }
        _ => {
            let text = format!("Echo: {prompt}");
            let ct = tokens(&text);
            json!({"candidates": [{"content": {"parts": [{"text": text, "thoughtSignature": "c2lnbmF0dXJl"}], "role": "model"}, "finishReason": "STOP", "index": 0}],
                "usageMetadata": usage(pt, ct, thinking(model)), "modelVersion": model, "responseId": "mockResp0001", "turnToken": "v1:mock"})
        }
    }
}

/// Stream chunks: the echo text split in `n`, cumulative usage, `finishReason` on the last.
pub fn stream_events(model: &str, body: &[u8], n: usize) -> Vec<Value> {
    let prompt = prompt_text(body);
    let pt = tokens(&prompt);
    let text = format!("Echo: {prompt}");
    let chars: Vec<char> = text.chars().collect();
    let per = chars.len().div_ceil(n).max(1);
    let mut out = Vec::new();
    let mut sent = String::new();
    let model = model.strip_prefix("models/").unwrap_or(model);
    for i in 0..n {
        let piece: String = chars.iter().skip(i * per).take(per).collect();
        sent.push_str(&piece);
        let mut cand =
            json!({"content": {"parts": [{"text": piece}], "role": "model"}, "index": 0});
        if i + 1 == n && model != "mock-truncated" {
            cand["finishReason"] = json!("STOP");
        }
        out.push(
            json!({"candidates": [cand], "usageMetadata": usage(pt, tokens(&sent), thinking(model)),
            "modelVersion": model, "responseId": "mockStream0001"}),
        );
        if model == "mock-midstream-error" && i == 1 {
            out.push(json!({"error": {"code": 500, "message": "An internal error has occurred.", "status": "INTERNAL"}}));
            break;
        }
    }
    out
}

pub fn count_tokens(body: &[u8]) -> Value {
    let t = tokens(&prompt_text(body));
    json!({"totalTokens": t, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": t}]})
}

pub fn embedding(body: &[u8], index: usize) -> Vec<f64> {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let dims = v
        .get("outputDimensionality")
        .and_then(|d| d.as_u64())
        .unwrap_or(8)
        .min(3072) as usize;
    let seed = prompt_text(body).len() + index;
    (0..dims)
        .map(|i| (((seed * 31 + i * 17) % 1000) as f64) / 1000.0 - 0.5)
        .collect()
}

pub fn batch_embed(body: &[u8]) -> Value {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let reqs = v
        .get("requests")
        .and_then(|r| r.as_array())
        .cloned()
        .unwrap_or_default();
    let embeddings: Vec<Value> = reqs
        .iter()
        .enumerate()
        .map(|(i, r)| json!({"values": embedding(serde_json::to_vec(r).unwrap_or_default().as_slice(), i)}))
        .collect();
    json!({"embeddings": embeddings})
}

pub fn model_object(model: &str) -> Value {
    let m = model.strip_prefix("models/").unwrap_or(model);
    json!({"name": format!("models/{m}"), "version": "001", "displayName": m, "description": "A mock model.",
        "inputTokenLimit": 1048576, "outputTokenLimit": 65536,
        "supportedGenerationMethods": ["generateContent", "countTokens", "createCachedContent", "batchGenerateContent"],
        "temperature": 1, "topP": 0.95, "topK": 64, "maxTemperature": 2, "thinking": true})
}

pub fn models_list() -> Value {
    let mut embed = model_object("gemini-embedding-001");
    embed["supportedGenerationMethods"] =
        json!(["embedContent", "countTokens", "asyncBatchEmbedContent"]);
    json!({"models": [model_object("gemini-2.5-flash"), model_object("gemini-2.5-pro"), embed]})
}

pub fn openai_models() -> Value {
    json!({"object": "list", "data": [
        {"id": "models/gemini-2.5-flash", "object": "model", "owned_by": "google", "display_name": "Gemini 2.5 Flash"},
        {"id": "models/gemini-2.5-pro", "object": "model", "owned_by": "google", "display_name": "Gemini 2.5 Pro"}]})
}

pub fn openai_completion(model: &str, req: &Value) -> Value {
    let prompt = prompt_text(
        serde_json::to_vec(req.get("messages").unwrap_or(&Value::Null))
            .unwrap_or_default()
            .as_slice(),
    );
    let text = format!("Echo: {prompt}");
    let (pt, ct) = (tokens(&prompt), tokens(&text));
    json!({"choices": [{"finish_reason": "stop", "index": 0, "message": {"content": text, "role": "assistant"}}],
        "created": 1772149571, "id": "mockOpenAi0001", "model": model, "object": "chat.completion",
        "usage": {"completion_tokens": ct, "prompt_tokens": pt, "total_tokens": pt + ct + thinking(model)}})
}

pub fn openai_stream_events(model: &str, req: &Value, n: usize) -> Vec<String> {
    let prompt = prompt_text(
        serde_json::to_vec(req.get("messages").unwrap_or(&Value::Null))
            .unwrap_or_default()
            .as_slice(),
    );
    let text = format!("Echo: {prompt}");
    let chars: Vec<char> = text.chars().collect();
    let per = chars.len().div_ceil(n).max(1);
    let pt = tokens(&prompt);
    let mut sent = String::new();
    let mut out = Vec::new();
    for i in 0..n {
        let piece: String = chars.iter().skip(i * per).take(per).collect();
        sent.push_str(&piece);
        let ct = tokens(&sent);
        let mut choice = json!({"delta": {"content": piece, "role": "assistant"}, "index": 0});
        if i + 1 == n && model != "mock-truncated" {
            choice["finish_reason"] = json!("stop");
        }
        out.push(json!({"choices": [choice], "created": 1772149571, "id": "mockOpenAi0001", "model": model,
            "object": "chat.completion.chunk", "usage": {"completion_tokens": ct, "prompt_tokens": pt, "total_tokens": pt + ct + thinking(model)}}).to_string());
        if model == "mock-midstream-error" && i == 1 {
            out.push(json!({"error": {"code": 500, "message": "An internal error has occurred.", "status": "INTERNAL"}}).to_string());
            break;
        }
    }
    out
}

pub fn openai_embeddings(model: &str, req: &Value) -> Value {
    let inputs: Vec<String> = match req.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().unwrap_or("").to_string())
            .collect(),
        _ => vec![String::new()],
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, s)| json!({"object": "embedding", "index": i, "embedding": embedding(json!({"text": s}).to_string().as_bytes(), i)}))
        .collect();
    let t: u64 = inputs.iter().map(|s| tokens(s)).sum();
    json!({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": t, "total_tokens": t}})
}
