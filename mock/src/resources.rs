//! Uploads (resumable and multipart) and the files and cached contents collections.

use super::*;

#[allow(clippy::too_many_arguments)]
pub(crate) async fn upload(
    state: &State,
    host: &str,
    rest: &str,
    query: Option<&str>,
    key: &str,
    project: &str,
    body: &[u8],
    _openai: bool,
) -> Response<Body> {
    let _ = rest;
    if let Some(id) = query_param(query, "upload_id") {
        let mut uploads = state.uploads.lock();
        let Some((owner, meta, data)) = uploads.get_mut(id) else {
            return json_resp(
                404,
                &json!({"error": {"code": 404, "message": "upload session not found", "status": "NOT_FOUND"}}),
            );
        };
        data.extend_from_slice(body);
        let _ = key;
        let name = format!("files/{id}");
        let mut file = meta.clone();
        file["name"] = json!(name);
        file["sizeBytes"] = json!(data.len().to_string());
        file["sha256Hash"] = json!(hex::encode(Sha256::digest(&*data)));
        file["uri"] = json!(format!(
            "https://generativelanguage.googleapis.com/v1beta/{name}"
        ));
        file["state"] = json!("ACTIVE");
        let owner = owner.clone();
        drop(uploads);
        state.files.lock().insert(name, (owner, file.clone()));
        let mut resp = json_resp(200, &json!({"file": file}));
        resp.headers_mut()
            .insert("x-goog-upload-status", "final".parse().expect("hv"));
        return resp;
    }
    let id = state.next_id();
    let meta: Value = serde_json::from_slice(body)
        .ok()
        .and_then(|v: Value| v.get("file").cloned())
        .unwrap_or(json!({}));
    state
        .uploads
        .lock()
        .insert(id.clone(), (project.to_string(), meta, Vec::new()));
    let mut url =
        format!("http://{host}/upload/v1beta/files?upload_id={id}&upload_protocol=resumable");
    if query_param(query, "key").is_some() {
        // Google echoes a query key into the upload URL; the gateway must strip it.
        url = format!(
            "http://{host}/upload/v1beta/files?key={key}&upload_id={id}&upload_protocol=resumable"
        );
    }
    let mut resp = full(200, "text/plain; charset=utf-8", Bytes::new());
    let h = resp.headers_mut();
    h.insert("x-goog-upload-url", url.parse().expect("hv"));
    h.insert("x-goog-upload-status", "active".parse().expect("hv"));
    h.insert(
        "x-goog-upload-chunk-granularity",
        "8388608".parse().expect("hv"),
    );
    resp
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn resource(
    store: &Mutex<HashMap<String, (String, Value)>>,
    collection: &str,
    noun: &str,
    rest: &str,
    method: &hyper::Method,
    project: &str,
    body: &[u8],
    state: &State,
) -> Response<Body> {
    let id = rest.trim_start_matches('/');
    let denied = |id: &str| {
        json_resp(
            403,
            &json!({"error": {"code": 403, "message": format!("You do not have permission to access the {} {id} or it may not exist.", if noun == "file" { "File" } else { "CachedContent" }), "status": "PERMISSION_DENIED"}}),
        )
    };
    match (method.as_str(), id.is_empty()) {
        ("GET", true) => {
            let list: Vec<Value> = store
                .lock()
                .values()
                .filter(|(p, _)| p == project)
                .map(|(_, v)| v.clone())
                .collect();
            json_resp(200, &json!({ collection: list }))
        }
        ("POST", true) => {
            let name = format!("{collection}/{}", state.next_id());
            let mut v: Value = serde_json::from_slice(body).unwrap_or(json!({}));
            if collection == "files" {
                v = v.get("file").cloned().unwrap_or(v);
            }
            v["name"] = json!(name);
            v["createTime"] = json!("2025-10-24T07:50:00.000000Z");
            store.lock().insert(name, (project.to_string(), v.clone()));
            json_resp(200, &v)
        }
        (m, false) => {
            let name = format!("{collection}/{}", id.split(':').next().unwrap_or(id));
            let mut guard = store.lock();
            match guard.get_mut(&name) {
                Some((owner, _)) if owner != project => denied(id),
                None => denied(id),
                Some((_, v)) => match m {
                    "GET" => json_resp(200, v),
                    "PATCH" => {
                        if let Ok(Value::Object(patch)) = serde_json::from_slice::<Value>(body) {
                            for (k, val) in patch {
                                v[k] = val;
                            }
                        }
                        json_resp(200, v)
                    }
                    "DELETE" => {
                        guard.remove(&name);
                        json_resp(200, &json!({}))
                    }
                    _ => json_resp(
                        405,
                        &json!({"error": {"code": 405, "message": "method", "status": "INVALID_ARGUMENT"}}),
                    ),
                },
            }
        }
        _ => json_resp(
            405,
            &json!({"error": {"code": 405, "message": "method", "status": "INVALID_ARGUMENT"}}),
        ),
    }
}
