//! The request head sent upstream: the client's path and query under the upstream's prefix,
//! its sanitized headers, and the pooled key in place of the client's credential.

use gemini_proxy_sdk::ApiKind;
use pingora::http::RequestHeader;

use super::Inbound;
use super::failure::{ErrorClass, Failure};
use crate::runtime::{Runtime, UpstreamKey};

/// The upstream request head for `inbound` on `key`; `content_length` `None` on a method with
/// a body means chunked.
pub fn upstream_request(
    rt: &Runtime,
    key: &UpstreamKey,
    inbound: &Inbound,
    method: &http::Method,
    content_length: Option<String>,
) -> Result<RequestHeader, Failure> {
    let mut target =
        String::with_capacity(rt.upstream.target.path_prefix.len() + inbound.path.len() + 32);
    target.push_str(&rt.upstream.target.path_prefix);
    target.push_str(&inbound.path);
    if let Some(q) = &inbound.query {
        target.push('?');
        target.push_str(q);
    }
    let bad = |_| Failure::new(400, ErrorClass::BadRequest, "request cannot be forwarded");
    let mut req = RequestHeader::build(
        method.clone(),
        target.as_bytes(),
        Some(inbound.headers.len() + 4),
    )
    .map_err(bad)?;
    for (name, value) in &inbound.headers {
        req.append_header(name.clone(), value.clone())
            .map_err(bad)?;
    }
    req.insert_header("host", rt.upstream.authority.clone())
        .map_err(bad)?;
    // Identity encoding keeps usage observable; Gemini answers are small next to the call.
    req.insert_header("accept-encoding", "identity")
        .map_err(bad)?;
    if inbound.route.api_kind == ApiKind::OpenAi {
        req.insert_header("authorization", key.bearer.clone())
            .map_err(bad)?;
    } else {
        req.insert_header("x-goog-api-key", key.goog_api_key.clone())
            .map_err(bad)?;
    }
    match content_length {
        Some(n) => req.insert_header("content-length", n).map_err(bad)?,
        None if !method_has_no_body(method) => req
            .insert_header("transfer-encoding", "chunked")
            .map_err(bad)?,
        None => {}
    }
    Ok(req)
}

fn method_has_no_body(m: &http::Method) -> bool {
    matches!(
        *m,
        http::Method::GET | http::Method::HEAD | http::Method::DELETE | http::Method::OPTIONS
    )
}
