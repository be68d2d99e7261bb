//! One request: read, recorded, authenticated as Google does, routed.

use super::*;

/// A request as the routes need it.
struct Call {
    method: hyper::Method,
    path: String,
    query: Option<String>,
    host: String,
    openai: bool,
    /// The key it presents, where Google looks for it (a bearer token on OpenAI paths).
    key: Option<String>,
    bearer: bool,
    upload_chunk: bool,
    chunks: usize,
    delay: Duration,
    pad: usize,
    body: Bytes,
}

impl Call {
    /// Reads the request, recording it as it came.
    async fn read(
        state: &State,
        conn: &ConnInfo,
        req: Request<Incoming>,
    ) -> Result<Call, Response<Body>> {
        let num = |name: &str| header(&req, name).and_then(|v| v.parse::<u64>().ok());
        let path = req.uri().path().to_string();
        let query = req.uri().query().map(str::to_string);
        let openai = path.contains("/openai/");
        let bearer = header(&req, "authorization").map(str::to_string);
        let key = if openai {
            bearer
                .as_deref()
                .and_then(|b| b.strip_prefix("Bearer "))
                .map(str::to_string)
        } else {
            header(&req, "x-goog-api-key")
                .map(str::to_string)
                .or_else(|| query_param(query.as_deref(), "key").map(str::to_string))
        };
        let mut call = Call {
            method: req.method().clone(),
            host: header(&req, "host").unwrap_or("localhost").to_string(),
            upload_chunk: path.starts_with("/upload/")
                && query_param(query.as_deref(), "upload_id").is_some(),
            openai,
            key,
            bearer: bearer.is_some(),
            chunks: num("x-mock-chunks").unwrap_or(3).clamp(1, 10_000) as usize,
            delay: Duration::from_millis(num("x-mock-event-delay-ms").unwrap_or(0)),
            pad: num("x-mock-pad").unwrap_or(0).min(64 * 1024) as usize,
            path,
            query,
            body: Bytes::new(),
        };
        let version = format!("{:?}", req.version());
        let headers: Vec<(String, String)> = req
            .headers()
            .iter()
            .map(|(k, v)| {
                let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                (k.as_str().to_string(), v)
            })
            .collect();
        call.body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return Err(json_resp(
                    400,
                    &json!({"error": {"code": 400, "message": "bad body", "status": "INVALID_ARGUMENT"}}),
                ));
            }
        };
        if state.record.load(std::sync::atomic::Ordering::Relaxed) {
            state.records.lock().push(Recorded {
                method: call.method.to_string(),
                path: call.path.clone(),
                query: call.query.clone(),
                headers,
                body_len: call.body.len(),
                body_sha256: hex::encode(Sha256::digest(&call.body)),
                key: call.key.clone(),
                version,
                tls_sni: conn.sni.clone(),
                connection: conn.id,
            });
        }
        Ok(call)
    }
}

pub(crate) async fn handle(
    state: Arc<State>,
    conn: ConnInfo,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    if live::is_live(req.uri().path()) {
        return Ok(live::accept(state, conn, req));
    }
    let call = match Call::read(&state, &conn, req).await {
        Ok(c) => c,
        Err(resp) => return Ok(resp),
    };
    if call.path == "/__mock/health" {
        return Ok(json_resp(200, &json!({"status": "ok"})));
    }
    // Auth, as Google does it.
    if !call.openai && call.bearer && !call.upload_chunk {
        return Ok(json_resp(401, &err_unauthenticated()));
    }
    let Some(key) = call
        .key
        .clone()
        .or_else(|| call.upload_chunk.then(String::new))
    else {
        return Ok(google_error(403, err_unregistered(), call.openai));
    };
    if !key.is_empty()
        && let Some(resp) = key_fault(&state, &key, call.openai)
    {
        return Ok(resp);
    }
    Ok(route(&state, &call, &key).await)
}

async fn route(state: &State, call: &Call, key: &str) -> Response<Body> {
    let project = state.project_of(key);
    let rest = call.path.trim_start_matches('/');
    if let Some(up) = rest.strip_prefix("upload/") {
        let q = call.query.as_deref();
        return upload(
            state,
            &call.host,
            up,
            q,
            key,
            &project,
            &call.body,
            call.openai,
        )
        .await;
    }
    let (_version, tail) = rest.split_once('/').unwrap_or((rest, ""));
    if let Some(oa) = tail.strip_prefix("openai/") {
        return openai_route(oa, &call.method, &call.body, call.chunks, call.delay).await;
    }
    if tail == "models" {
        return json_resp(200, &models_list());
    }
    if tail == "auth_tokens" && call.method == "POST" {
        return json_resp(200, &live::create_token(state, key, &call.body));
    }
    if let Some(m) = tail.strip_prefix("models/") {
        return model_call(state, call, key, &project, m).await;
    }
    let collection = [("files", "file"), ("cachedContents", "cached content")]
        .into_iter()
        .find_map(|(c, noun)| tail.strip_prefix(c).map(|rest| (c, noun, rest)));
    if let Some((c, noun, rest)) = collection {
        let store = if c == "files" {
            &state.files
        } else {
            &state.caches
        };
        return resource(
            store,
            c,
            noun,
            rest,
            &call.method,
            &project,
            &call.body,
            state,
        );
    }
    json_resp(
        404,
        &json!({"error": {"code": 404, "message": format!("mock: no route {}", call.path), "status": "NOT_FOUND"}}),
    )
}

/// `models/{model}[:verb]` (the colon may come percent-encoded).
async fn model_call(
    state: &State,
    call: &Call,
    key: &str,
    project: &str,
    m: &str,
) -> Response<Body> {
    let (model, verb) = match m.split_once(':') {
        Some((a, b)) => (a, Some(b)),
        None => match m.to_ascii_lowercase().find("%3a") {
            Some(i) => (&m[..i], Some(&m[i + 3..])),
            None => (m, None),
        },
    };
    if let Some(resp) = model_fault(model, call.openai).await {
        return resp;
    }
    if model == "mock-leaky" {
        return leaky(key, verb == Some("streamGenerateContent")).await;
    }
    let body = &call.body;
    match verb {
        None => json_resp(200, &model_object(model)),
        Some("generateContent") => generate(state, project, model, body),
        Some("streamGenerateContent") => {
            let sse = query_param(call.query.as_deref(), "alt") == Some("sse");
            stream(model, body, call.chunks, call.delay, sse, call.pad)
        }
        Some("countTokens") => json_resp(200, &count_tokens(body)),
        Some("embedContent") => {
            json_resp(200, &json!({"embedding": {"values": embedding(body, 0)}}))
        }
        Some("batchEmbedContents") => json_resp(200, &batch_embed(body)),
        Some(other) => google_error(
            400,
            json!({"error": {"code": 400, "message": format!("mock does not implement :{other}"), "status": "INVALID_ARGUMENT"}}),
            false,
        ),
    }
}

pub(crate) fn key_fault(state: &State, key: &str, openai: bool) -> Option<Response<Body>> {
    let k = key;
    if k.starts_with("invalid-") || state.revoked.lock().contains(k) {
        return Some(google_error(400, err_key_invalid(), openai));
    }
    if k.starts_with("leaked-") {
        return Some(google_error(403, err_leaked(), openai));
    }
    if k.starts_with("suspended-") {
        return Some(google_error(403, err_suspended(k), openai));
    }
    if k.starts_with("minute429-") {
        return Some(google_error(
            429,
            err_quota_minute("gemini-2.5-flash", 10, "26s"),
            openai,
        ));
    }
    if k.starts_with("day429-") {
        return Some(google_error(
            429,
            err_quota_day("gemini-2.5-pro", 50, "48s"),
            openai,
        ));
    }
    if k.starts_with("zero-") {
        return Some(google_error(429, err_quota_zero("gemini-2.5-pro"), openai));
    }
    if k.starts_with("bare429-") {
        return Some(google_error(429, err_bare_429(), openai));
    }
    if let Some(rest) = k.strip_prefix("rpm-") {
        let limit: u64 = rest
            .split('-')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(1);
        let minute = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
            / 60;
        let project = state.project_of(k);
        let mut rpm = state.rpm.lock();
        let used = rpm.entry((project, minute)).or_insert(0);
        *used += 1;
        if *used > limit {
            let left = 60
                - std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs()
                    % 60;
            return Some(google_error(
                429,
                err_quota_minute("gemini-2.5-flash", limit, &format!("{left}s")),
                openai,
            ));
        }
    }
    None
}

/// An answer that carries `key` in headers and body (an upstream that should never be trusted
/// with what it echoes).
pub(crate) async fn leaky(key: &str, stream: bool) -> Response<Body> {
    let text = format!("the key is {key}; as a consumer: api_key:{key}");
    let mut resp = if stream {
        let event = format!(
            "data: {}\r\n\r\n",
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP"}],
                   "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 1, "totalTokenCount": 2}})
        );
        let (tx, resp) = channel_body(200, "text/event-stream");
        tokio::spawn(async move {
            // Small pieces, so the key straddles chunk boundaries.
            for piece in event.as_bytes().chunks(7) {
                if tx.send(Ok(Bytes::copy_from_slice(piece))).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        resp
    } else {
        json_resp(
            200,
            &json!({"candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP"}]}),
        )
    };
    let h = resp.headers_mut();
    for (name, value) in [
        ("x-mock-key", key.to_string()),
        ("server-timing", format!("upstream;desc=\"{key}\"")),
        (
            "location",
            format!("https://elsewhere.example/next?alt=sse&key={key}"),
        ),
        ("x-goog-upload-status", format!("active {key}")),
    ] {
        if let Ok(v) = value.parse() {
            h.insert(hyper::header::HeaderName::from_static(name), v);
        }
    }
    resp
}

pub(crate) async fn model_fault(model: &str, openai: bool) -> Option<Response<Body>> {
    let model = model.strip_prefix("models/").unwrap_or(model);
    if model == "mock-overloaded" {
        return Some(google_error(503, err_overloaded(), openai));
    }
    if model == "mock-internal" {
        return Some(google_error(500, err_internal(), openai));
    }
    if model.starts_with("nosuch") {
        return Some(google_error(404, err_model_not_found(model), openai));
    }
    if let Some(ms) = model
        .strip_prefix("mock-slow-")
        .and_then(|n| n.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    None
}
