//! The downstream request, read once: route, client credential, sanitized query and headers;
//! paths refused before routing.

use gemini_proxy_sdk::{CallRoute, ClientCredential, CredentialSource, classify};
use http::header::{HeaderMap, HeaderName};
use percent_encoding::percent_decode_str;

/// Headers never forwarded upstream nor shown to plugins as-is.
const STRIPPED: &[&str] = &[
    "x-goog-api-key",
    "authorization",
    "x-api-key",
    "proxy-authorization",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "expect",
    "cookie",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    "x-goog-user-project",
    "x-request-id",
];

pub struct Inbound {
    pub route: CallRoute,
    pub path: String,
    pub query: Option<String>,
    pub credential: Option<ClientCredential>,
    pub headers: HeaderMap,
    /// The declared `Content-Length`, parsed once.
    pub content_length: Option<u64>,
}

/// Removes the credential parameters (`key=`, and `access_token=` that carries an ephemeral
/// token), returning the rest and the credential found (a `key=` first).
pub fn split_key_param(query: &str) -> (Option<String>, Option<String>) {
    let mut kept = Vec::new();
    let (mut key, mut access_token) = (None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let name = pair.split('=').next().unwrap_or("");
        let slot = match &*percent_decode_str(name).decode_utf8_lossy() {
            "key" => &mut key,
            "access_token" => &mut access_token,
            _ => {
                kept.push(pair);
                continue;
            }
        };
        if slot.is_none() {
            let v = pair.split_once('=').map(|(_, v)| v).unwrap_or("");
            *slot = Some(percent_decode_str(v).decode_utf8_lossy().into_owned());
        }
    }
    let rest = (!kept.is_empty()).then(|| kept.join("&"));
    (rest, key.or(access_token))
}

/// Sanitized headers: credentials, hop-by-hop (including those named in `Connection`) and
/// identity-revealing proxy headers removed.
pub fn sanitize_headers(src: &HeaderMap) -> HeaderMap {
    let mut extra: Vec<HeaderName> = Vec::new();
    for v in src.get_all("connection") {
        if let Ok(s) = v.to_str() {
            extra.extend(
                s.split(',')
                    .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok()),
            );
        }
    }
    let mut out = HeaderMap::with_capacity(src.len());
    for (name, value) in src {
        let n = name.as_str();
        if STRIPPED.contains(&n) || extra.contains(name) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// The path as Google will read it: `%XX` escapes of letters, digits, `-._~` and `:` decoded
/// (`/v1beta/%6Dodels/...` is `models`, and is checked as such). Any other escape is refused:
/// no Gemini path needs one, and a path the gateway read differently from Google would slip
/// past its model checks.
pub fn normalized_path(path: &str) -> Result<std::borrow::Cow<'_, str>, &'static str> {
    if !path.contains('%') {
        return Ok(std::borrow::Cow::Borrowed(path));
    }
    let b = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            out.push(b[i] as char);
            i += 1;
            continue;
        }
        let byte = path
            .get(i + 1..i + 3)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or("the path has a malformed % escape")?;
        if !(byte.is_ascii_alphanumeric() || b"-._~:".contains(&byte)) {
            return Err("the path has a % escape the gateway does not accept");
        }
        out.push(byte as char);
        i += 3;
    }
    Ok(std::borrow::Cow::Owned(out))
}

/// Google system parameters that change what a call does or what its answer holds: another
/// method, a field mask that can drop `usageMetadata` (and the token count a limit corrects
/// from), or another wire format (JSONP, protobuf) that the gateway would relay without reading.
/// Every `$`-prefixed form is one of them.
const REFUSED_PARAMS: &[&str] = &[
    "fields",
    "callback",
    "httpmethod",
    "ct",
    "userproject",
    "access_token",
    "oauth_token",
    "bearer_token",
];
/// Formats the gateway reads and relays: JSON, server-sent events, and a file's bytes.
const ALLOWED_ALT: &[&str] = &["json", "sse", "media"];
const REFUSED_HEADERS: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-goog-fieldmask",
];

/// Why the query or headers are refused: a system parameter (any spelling, percent-encoded
/// or not) that would change the method, the fields or the format of the answer.
pub fn refused_system_parameter(query: Option<&str>, headers: &HeaderMap) -> Option<String> {
    if let Some(h) = REFUSED_HEADERS.iter().find(|h| headers.contains_key(**h)) {
        return Some(format!("the {h} header is not accepted"));
    }
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = percent_decode_str(name)
            .decode_utf8_lossy()
            .to_ascii_lowercase();
        let refused = name.starts_with('$') || REFUSED_PARAMS.contains(&name.as_str());
        let alt_ok = || {
            let v = percent_decode_str(value)
                .decode_utf8_lossy()
                .to_ascii_lowercase();
            ALLOWED_ALT.contains(&v.as_str())
        };
        if refused || (name == "alt" && !alt_ok()) {
            let shown: String = name.chars().take(40).collect();
            return Some(format!(
                "the query parameter {shown:?} is not accepted here"
            ));
        }
    }
    None
}

/// How Google names an ephemeral token.
pub const EPHEMERAL_PREFIX: &str = "auth_tokens/";

/// The `Authorization` header's credential: a `Bearer` token, or an ephemeral `Token`.
fn authorization(headers: &HeaderMap) -> (Option<String>, Option<String>) {
    let Some((scheme, value)) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().split_once(' '))
    else {
        return (None, None);
    };
    let value = Some(value.trim().to_string()).filter(|s| !s.is_empty());
    if scheme.eq_ignore_ascii_case("bearer") {
        (value, None)
    } else if scheme.eq_ignore_ascii_case("token") {
        (None, value)
    } else {
        (None, None)
    }
}

impl Inbound {
    /// `None` when the path is not one the gateway serves. `path` is the
    /// [`normalized_path`].
    pub fn parse(
        method: &str,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Option<Inbound> {
        let route = classify(method, path)?;
        let (query, query_key) = match query {
            Some(q) => split_key_param(q),
            None => (None, None),
        };
        let header_key = headers
            .get("x-goog-api-key")
            .and_then(|v| v.to_str().ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        let (bearer, token) = authorization(headers);
        // Precedence when several are given: header, then `Authorization`, then query.
        let credential = header_key
            .map(|v| ClientCredential::new(CredentialSource::GoogApiKeyHeader, v))
            .or_else(|| token.map(|v| ClientCredential::new(CredentialSource::EphemeralToken, v)))
            .or_else(|| bearer.map(|v| ClientCredential::new(CredentialSource::Bearer, v)))
            .or_else(|| query_key.map(|v| ClientCredential::new(CredentialSource::QueryKey, v)))
            .map(|c| {
                // Wherever it came, an ephemeral token is Google's, never a gateway token.
                if c.value().starts_with(EPHEMERAL_PREFIX) {
                    ClientCredential::new(CredentialSource::EphemeralToken, c.value())
                } else {
                    c
                }
            });
        let content_length = headers
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        Some(Inbound {
            route,
            path: path.to_string(),
            query,
            credential,
            headers: sanitize_headers(headers),
            content_length,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_parameters_that_change_the_answer_are_refused() {
        let none = HeaderMap::new();
        for q in [
            "fields=candidates",
            "%66ields=x",
            "$fields=x",
            "%24alt=proto",
            "alt=proto",
            "alt=JSONP",
            "alt=%70roto",
            "$httpMethod=DELETE",
            "callback=f",
            "$ct=application/x-protobuf",
            "userProject=other",
            "a=1&access_token=t",
            "$.xgafv=2",
        ] {
            assert!(refused_system_parameter(Some(q), &none).is_some(), "{q}");
        }
        for q in [
            "alt=sse",
            "alt=json",
            "alt=media",
            "pageSize=5&pageToken=x",
            "uploadType=resumable",
        ] {
            assert_eq!(refused_system_parameter(Some(q), &none), None, "{q}");
        }
        for h in [
            "x-http-method-override",
            "X-Goog-FieldMask",
            "x-http-method",
        ] {
            let mut m = HeaderMap::new();
            m.insert(
                HeaderName::from_bytes(h.as_bytes()).unwrap(),
                "x".parse().unwrap(),
            );
            assert!(refused_system_parameter(None, &m).is_some(), "{h}");
        }
    }

    #[test]
    fn strips_key_param_only() {
        assert_eq!(
            split_key_param("alt=sse&key=abc"),
            (Some("alt=sse".into()), Some("abc".into()))
        );
        assert_eq!(split_key_param("key=a%2Bb"), (None, Some("a+b".into())));
        assert_eq!(
            split_key_param("pageSize=5&monkey=1"),
            (Some("pageSize=5&monkey=1".into()), None)
        );
        assert_eq!(
            split_key_param("k%65y=x&alt=sse"),
            (Some("alt=sse".into()), Some("x".into()))
        );
        assert_eq!(
            split_key_param("access_token=auth_tokens%2Fa&key=k&access%5ftoken=b"),
            (None, Some("k".into()))
        );
        assert_eq!(
            split_key_param("alt=sse&access_token=t"),
            (Some("alt=sse".into()), Some("t".into()))
        );
    }

    #[test]
    fn ephemeral_tokens_are_known_wherever_they_come() {
        let ws = "/ws/google.ai.generativelanguage.v1alpha.GenerativeService.BidiGenerateContentConstrained";
        let parse = |h: &[(&str, &str)], q: Option<&str>| {
            let mut m = HeaderMap::new();
            for (k, v) in h {
                m.insert(
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            let c = Inbound::parse("GET", ws, q, &m)
                .unwrap()
                .credential
                .unwrap();
            (c.source(), c.value().to_string())
        };
        let want = (
            CredentialSource::EphemeralToken,
            "auth_tokens/abc".to_string(),
        );
        assert_eq!(
            parse(&[("authorization", "Token auth_tokens/abc")], None),
            want
        );
        assert_eq!(parse(&[("x-goog-api-key", "auth_tokens/abc")], None), want);
        assert_eq!(parse(&[], Some("access_token=auth_tokens%2Fabc")), want);
        assert_eq!(
            parse(&[("authorization", "Bearer auth_tokens/abc")], None),
            want
        );
        let gw = parse(&[("authorization", "Bearer gw-token")], None);
        assert_eq!(gw.0, CredentialSource::Bearer);
    }

    #[test]
    fn paths_are_read_as_google_reads_them() {
        assert_eq!(
            normalized_path("/v1beta/%6Dodels/gemini-2.5-pro%3AgenerateContent").unwrap(),
            "/v1beta/models/gemini-2.5-pro:generateContent"
        );
        assert_eq!(normalized_path("/v1beta/models").unwrap(), "/v1beta/models");
        for bad in [
            "/v1beta/models/a%20b",
            "/v1beta/%zz",
            "/v1beta/%4",
            "/v1beta/%c3%a9",
        ] {
            assert!(normalized_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn finds_credentials_and_sanitizes() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer tok".parse().unwrap());
        h.insert("connection", "keep-alive, x-secret-hop".parse().unwrap());
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert("x-goog-api-client", "sdk".parse().unwrap());
        let i = Inbound::parse("GET", "/v1beta/models", Some("key=q"), &h).unwrap();
        assert_eq!(i.path, "/v1beta/models");
        assert_eq!(i.credential.as_ref().unwrap().value(), "tok");
        assert_eq!(
            i.credential.as_ref().unwrap().source(),
            CredentialSource::Bearer
        );
        assert!(i.query.is_none());
        assert!(i.headers.get("authorization").is_none());
        assert!(i.headers.get("x-secret-hop").is_none());
        assert!(i.headers.get("x-goog-api-client").is_some());
    }
}

/// Dot segments, encoded separators or double encoding: never part of a Gemini API path, and the
/// classic ways to make a path mean something else further along. Refused before routing.
pub fn path_is_suspicious(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f")
        || lower.contains("%5c")
        || lower.contains("%25")
        || lower.contains('\\')
    {
        return true;
    }
    let decoded = percent_decode_str(&lower).decode_utf8_lossy();
    decoded.split('/').any(|seg| seg == ".." || seg == ".") || decoded.contains("//")
}

#[cfg(test)]
mod path_tests {
    use super::path_is_suspicious;

    #[test]
    fn flags_traversal_and_encoding_tricks_only() {
        for bad in [
            "/v1beta/../api/keys",
            "/..%2fapi",
            "/%2e%2e/api",
            "/v1beta/models/..%252f",
            "//api/keys",
            "/v1beta/./models",
            "/v1beta/models\\..",
        ] {
            assert!(path_is_suspicious(bad), "{bad}");
        }
        for good in [
            "/v1beta/models/gemini-2.5-flash:generateContent",
            "/v1beta/models/gemini-2.5-flash%3AstreamGenerateContent",
            "/upload/v1beta/files",
            "/v1beta/openai/chat/completions",
            "/v1beta/files/abc-123",
            "/v1beta/models/gemini-2.5-flash-preview-09-2025",
        ] {
            assert!(!path_is_suspicious(good), "{good}");
        }
    }
}
