//! Which upstream response headers reach the client, and in what form.
//!
//! An allow-list, not a deny-list: a header Google (or whatever `gemini.base_url` points at)
//! adds tomorrow does not reach clients until it is listed here. Every relayed value is masked
//! by the [`Scrubber`]; upload URLs are pointed at the gateway and redirects lose any `key=`.

use http::{HeaderName, HeaderValue};

use super::inbound::split_key_param;
use crate::scrub::Scrubber;

/// Relayed as they are (after masking).
const RELAYED: &[&str] = &[
    "content-type",
    "content-length",
    "content-disposition",
    "content-range",
    "accept-ranges",
    "cache-control",
    "expires",
    "etag",
    "last-modified",
    "date",
    "vary",
    "retry-after",
    "server-timing",
    "x-content-type-options",
    "x-frame-options",
    "x-xss-protection",
    "x-guploader-uploadid",
];

/// Upload headers whose value is a URL that must point at the gateway.
const UPLOAD_URLS: &[&str] = &["x-goog-upload-url", "x-goog-upload-control-url"];

/// The headers of an upstream answer as the client gets them. `public_base` is the gateway's
/// own origin (`https://gw.example`), asked for only when an upload URL is rewritten.
pub fn client_headers<'a>(
    upstream: impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)>,
    scrub: &Scrubber,
    public_base: &dyn Fn() -> String,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::new();
    for (name, value) in upstream {
        let n = name.as_str();
        let relayed = if UPLOAD_URLS.contains(&n) || n == "location" {
            value
                .to_str()
                .ok()
                .and_then(|v| {
                    if n == "location" {
                        Some(without_key(v))
                    } else {
                        rewrite_upload_url(v, &public_base())
                    }
                })
                .and_then(|v| HeaderValue::from_str(&v).ok())
        } else if RELAYED.contains(&n) || n.starts_with("x-goog-upload-") {
            Some(value.clone())
        } else {
            None
        };
        if let Some(v) = relayed {
            out.push((name.clone(), masked(scrub, v)));
        }
    }
    out
}

fn masked(scrub: &Scrubber, v: HeaderValue) -> HeaderValue {
    if !scrub.finds(v.as_bytes()) {
        return v;
    }
    let mut b = v.as_bytes().to_vec();
    scrub.mask(&mut b);
    // Masking writes `*` over visible ASCII: the value stays valid.
    HeaderValue::from_bytes(&b).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A URL without its `key=` query parameters.
fn without_key(url: &str) -> String {
    match url.split_once('?') {
        Some((base, q)) => match split_key_param(q).0 {
            Some(rest) => format!("{base}?{rest}"),
            None => base.to_string(),
        },
        None => url.to_string(),
    }
}

/// Rewrites an upstream upload URL to point at the gateway, dropping any `key=`.
fn rewrite_upload_url(value: &str, public_base: &str) -> Option<String> {
    let uri: http::Uri = value.parse().ok()?;
    let pq = uri.path_and_query()?;
    let query = pq.query().and_then(|q| split_key_param(q).0);
    Some(match query {
        Some(q) => format!("{public_base}{}?{q}", pq.path()),
        None => format!("{public_base}{}", pq.path()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_headers_pass_masked_and_rewritten() {
        let scrub = Scrubber::new(["pooled-secret-1"]);
        let mut h = http::HeaderMap::new();
        for (k, v) in [
            ("content-type", "application/json"),
            ("x-goog-upload-status", "active"),
            (
                "x-goog-upload-url",
                "https://up.example/upload/v1beta/files?upload_id=u1&key=pooled-secret-1",
            ),
            (
                "location",
                "https://else.example/x?alt=sse&key=pooled-secret-1",
            ),
            ("x-debug-key", "pooled-secret-1"),
            ("set-cookie", "a=b"),
            ("alt-svc", "h3=\":443\""),
            ("server", "scaffolding on HTTPServer2"),
            ("vary", "Origin, pooled-secret-1"),
        ] {
            h.append(
                HeaderName::from_static(k),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let out = client_headers(h.iter(), &scrub, &|| "http://gw:1".into());
        let names: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "content-type",
                "x-goog-upload-status",
                "x-goog-upload-url",
                "location",
                "vary"
            ]
        );
        let text = format!("{out:?}");
        assert!(!text.contains("pooled-secret-1"), "{text}");
        assert_eq!(out[2].1, "http://gw:1/upload/v1beta/files?upload_id=u1");
        assert_eq!(out[3].1, "https://else.example/x?alt=sse");
        assert_eq!(out[4].1, "Origin, ***************");
    }
}
