//! Model calls: generate, stream, and the OpenAI-compatible routes.

use super::*;

pub(crate) fn generate(state: &State, project: &str, model: &str, body: &[u8]) -> Response<Body> {
    // Like Google: a file or cached content of another project is invisible.
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if let Some(cc) = v.get("cachedContent").and_then(|c| c.as_str())
        && state
            .caches
            .lock()
            .get(cc)
            .is_none_or(|(owner, _)| owner != project)
    {
        return json_resp(
            403,
            &json!({"error": {"code": 403, "message": format!("You do not have permission to access the CachedContent {cc} or it may not exist."), "status": "PERMISSION_DENIED"}}),
        );
    }
    let text = String::from_utf8_lossy(body);
    for uri in text.split("\"fileUri\":").skip(1) {
        let uri = uri.trim_start().trim_start_matches('"');
        if let Some(i) = uri.find("files/") {
            let id: String = uri[i + 6..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect();
            let name = format!("files/{id}");
            if state
                .files
                .lock()
                .get(&name)
                .is_none_or(|(owner, _)| owner != project)
            {
                return json_resp(
                    403,
                    &json!({"error": {"code": 403, "message": format!("You do not have permission to access the File {id} or it may not exist."), "status": "PERMISSION_DENIED"}}),
                );
            }
        }
    }
    json_resp(200, &generate_response(model, body))
}

pub(crate) fn stream(
    model: &str,
    body: &[u8],
    chunks: usize,
    delay: Duration,
    sse: bool,
    pad: usize,
) -> Response<Body> {
    let events = stream_events(model, body, chunks);
    // An SSE comment before each event: bulk for tests of clients that stop reading.
    let padding = if sse && pad > 0 {
        format!(": {}\r\n", "x".repeat(pad))
    } else {
        String::new()
    };
    let ct = if sse {
        "text/event-stream"
    } else {
        "application/json; charset=UTF-8"
    };
    let (tx, mut resp) = channel_body(200, ct);
    if sse {
        resp.headers_mut()
            .insert("content-disposition", "attachment".parse().expect("hv"));
    }
    let cut = model == "mock-cut";
    tokio::spawn(async move {
        let n = events.len();
        for (i, ev) in events.into_iter().enumerate() {
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let text = serde_json::to_string(&ev).unwrap_or_default();
            let frame = if sse {
                format!("{padding}data: {text}\r\n\r\n")
            } else if i == 0 {
                format!("[{}", serde_json::to_string_pretty(&ev).unwrap_or_default())
            } else {
                format!(
                    "\n,\r\n{}",
                    serde_json::to_string_pretty(&ev).unwrap_or_default()
                )
            };
            if tx.send(Ok(Bytes::from(frame))).await.is_err() {
                return;
            }
            if cut && i == 0 {
                let _ = tx
                    .send(Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "mock cut",
                    )))
                    .await;
                return;
            }
            if !sse && i + 1 == n {
                let _ = tx.send(Ok(Bytes::from_static(b"\n]"))).await;
            }
        }
    });
    resp
}

pub(crate) async fn openai_route(
    path: &str,
    method: &hyper::Method,
    body: &[u8],
    chunks: usize,
    delay: Duration,
) -> Response<Body> {
    let path = path.trim_end_matches('/');
    if path == "models" {
        return json_resp(200, &openai_models());
    }
    if let Some(id) = path.strip_prefix("models/") {
        return json_resp(
            200,
            &json!({"id": format!("models/{id}"), "object": "model", "owned_by": "google"}),
        );
    }
    let req: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let model = req
        .get("model")
        .and_then(|m| m.as_str())
        .unwrap_or("gemini-2.5-flash")
        .to_string();
    if let Some(resp) = model_fault(&model, true).await {
        return resp;
    }
    match (method.as_str(), path) {
        ("POST", "chat/completions") => {
            if req.get("stream").and_then(|s| s.as_bool()) == Some(true) {
                let events = openai_stream_events(&model, &req, chunks);
                let (tx, resp) = channel_body(200, "text/event-stream");
                let midstream = model == "mock-midstream-error";
                tokio::spawn(async move {
                    for (i, ev) in events.iter().enumerate() {
                        if i > 0 && !delay.is_zero() {
                            tokio::time::sleep(delay).await;
                        }
                        if tx
                            .send(Ok(Bytes::from(format!("data: {}\n\n", ev))))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    if !midstream && model != "mock-truncated" {
                        let _ = tx.send(Ok(Bytes::from_static(b"data: [DONE]\n\n"))).await;
                    }
                });
                resp
            } else {
                json_resp(200, &openai_completion(&model, &req))
            }
        }
        ("POST", "embeddings") => json_resp(200, &openai_embeddings(&model, &req)),
        _ => google_error(
            404,
            json!({"error": {"code": 404, "message": format!("mock: no openai route {path}"), "status": "NOT_FOUND"}}),
            true,
        ),
    }
}
