//! CORS for browser clients (`server.cors`): preflights answered by the gateway itself, and
//! the allow-origin header on every answer to an allowed origin.

use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use super::call::CallState;
use super::failure::{ErrorClass, Failure};
use crate::runtime::Runtime;

/// Whether this request is a preflight the gateway answers (no credential needed: browsers
/// send none on preflight).
pub fn is_preflight(rt: &Runtime, session: &Session) -> bool {
    let req = session.req_header();
    rt.config.server.cors.is_some()
        && req.method == http::Method::OPTIONS
        && req.headers.contains_key("access-control-request-method")
}

/// Answers a CORS preflight.
pub async fn preflight(session: &mut Session, ctx: &mut CallState) -> Result<(), Failure> {
    let rt = ctx.runtime.clone();
    let Some(cors) = &rt.config.server.cors else {
        return Ok(());
    };
    let origin = session
        .req_header()
        .headers
        .get("origin")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(allow) = cors.allow(origin) else {
        return Err(Failure::new(403, ErrorClass::CorsOrigin, "origin not allowed").unread());
    };
    let mut resp = ResponseHeader::build(204, Some(6))
        .map_err(|_| Failure::new(500, ErrorClass::Internal, "response"))?;
    let _ = resp.insert_header("access-control-allow-origin", allow);
    let _ = resp.insert_header(
        "access-control-allow-methods",
        "GET, POST, PUT, PATCH, DELETE, OPTIONS",
    );
    let _ = resp.insert_header(
        "access-control-allow-headers",
        cors.allowed_headers.join(", "),
    );
    let _ = resp.insert_header(
        "access-control-max-age",
        cors.max_age.0.as_secs().to_string(),
    );
    let _ = resp.insert_header("vary", "Origin");
    let _ = resp.insert_header("x-request-id", ctx.request_id.as_str());
    ctx.done.status = 204;
    let _ = session.write_response_header(Box::new(resp), true).await;
    Ok(())
}

/// Adds `Access-Control-Allow-Origin` when the request's origin is allowed.
pub fn cors_headers(rt: &Runtime, session: &Session, out: &mut ResponseHeader) {
    let Some(cors) = &rt.config.server.cors else {
        return;
    };
    if let Some(allow) = session
        .req_header()
        .headers
        .get("origin")
        .and_then(|v| v.to_str().ok())
        .and_then(|o| cors.allow(o))
    {
        let _ = out.insert_header("access-control-allow-origin", allow);
        let _ = out.insert_header(
            "access-control-expose-headers",
            "x-request-id, x-goog-upload-url, x-goog-upload-status, retry-after",
        );
        let _ = out.append_header("vary", "Origin");
    }
}
