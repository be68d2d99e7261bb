//! Validation probe: asks the upstream for one model with a key (`GET {version}/models?pageSize=1`),
//! which costs no generation quota, to tell whether a dead key works again.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;

use crate::pool::{Verdict, classify};
use crate::runtime::{Runtime, Shared};

/// What a probe found.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ProbeResult {
    pub key_id: String,
    /// Upstream status (0 when the upstream could not be reached).
    pub status: u16,
    /// The pool's reading of the answer (`success`, `key_dead`, ...).
    pub verdict: &'static str,
    /// True if the key was dead and is alive again.
    pub revived: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

async fn ask(rt: &Runtime, index: usize) -> Result<(u16, bytes::Bytes), String> {
    let key = &rt.keys[index];
    let peer = rt
        .upstream
        .peer()
        .ok_or_else(|| "upstream host does not resolve".to_string())?;
    let (mut up, _) = rt
        .upstream
        .connector
        .get_http_session(&peer)
        .await
        .map_err(|e| format!("connect: {}", e.etype().as_str()))?;
    up.set_read_timeout(Some(Duration::from_secs(10)));
    // The same request head a client's `GET /v1beta/models?pageSize=1` would get upstream.
    let inbound = crate::proxy::Inbound::parse(
        "GET",
        "/v1beta/models",
        Some("pageSize=1"),
        &http::HeaderMap::new(),
    )
    .ok_or_else(|| "bad probe request".to_string())?;
    let req = crate::proxy::upstream_request(rt, key, &inbound, &http::Method::GET, None)
        .map_err(|_| "bad probe request".to_string())?;
    up.write_request_header(Box::new(req))
        .await
        .map_err(|e| format!("send: {}", e.etype().as_str()))?;
    up.finish_request_body()
        .await
        .map_err(|e| format!("send: {}", e.etype().as_str()))?;
    up.read_response_header()
        .await
        .map_err(|e| format!("read: {}", e.etype().as_str()))?;
    let status = up.response_header().map_or(0, |h| h.status.as_u16());
    let mut body = BytesMut::new();
    while let Ok(Some(chunk)) = up.read_response_body().await {
        if body.len() + chunk.len() > 256 * 1024 {
            break;
        }
        body.extend_from_slice(&chunk);
    }
    Ok((status, body.freeze()))
}

/// Probes `key_id` and, if it answers like a working key, clears its dead state.
pub async fn probe(shared: &Arc<Shared>, key_id: &str) -> Option<ProbeResult> {
    let rt = shared.runtime.load_full();
    let index = rt.index.index_of(key_id)?;
    let was_dead = shared.pool.dead_reason(key_id).is_some();
    let result = match ask(&rt, index).await {
        Ok((status, body)) => {
            let verdict = classify(
                status,
                gemini_proxy_sdk::UpstreamError::parse(&body).as_ref(),
                false,
            );
            let mut revived = false;
            match &verdict {
                Verdict::Success if was_dead => {
                    revived = shared.pool.set_dead(key_id, None);
                }
                Verdict::KeyDead(reason) if !was_dead => {
                    shared.pool.set_dead(key_id, Some(*reason));
                }
                _ => {}
            }
            ProbeResult {
                key_id: key_id.to_string(),
                status,
                verdict: verdict.class(),
                revived,
                error: None,
            }
        }
        Err(e) => ProbeResult {
            key_id: key_id.to_string(),
            status: 0,
            verdict: "unreachable",
            revived: false,
            error: Some(e),
        },
    };
    tracing::info!(target: "gemini_proxy::security", key_id, status = result.status, verdict = result.verdict, revived = result.revived, "key validation probe");
    Some(result)
}

/// Probes every dead key (operator-disabled ones excepted): the periodic re-check.
pub async fn probe_dead_keys(shared: &Arc<Shared>) -> Vec<ProbeResult> {
    let dead: Vec<String> = shared
        .pool
        .report()
        .into_iter()
        .filter(|k| k.dead_reason.is_some_and(|r| r != "operator"))
        .map(|k| k.id)
        .collect();
    let mut out = Vec::new();
    for id in dead {
        if let Some(r) = probe(shared, &id).await {
            out.push(r);
        }
    }
    out
}
