//! The operator console: static files embedded in the binary, served at `/ui/` by the admin
//! listener. The files hold no data and no secret; every figure the pages show comes from the
//! admin API with the operator's token, under the same route table, gate and audit as any
//! other client's call.
//!
//! Every answer carries a strict Content-Security-Policy (scripts and styles from this origin
//! only, no inline code, no eval, no framing, requests to this origin only).

use http::Response;

/// The policy of every console file: nothing but this origin's own files and API.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! assets {
    ($( $name:literal => $ty:expr ),* $(,)?) => {
        &[ $( Asset { name: $name, content_type: $ty, body: include_bytes!(concat!("../../console/", $name)) }, )* ]
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file of the console (`core/console/`). uPlot is vendored with its license.
const ASSETS: &[Asset] = assets![
    "index.html" => "text/html; charset=utf-8",
    "console.css" => "text/css; charset=utf-8",
    "app.js" => JS,
    "lib.js" => JS,
    "overview.js" => JS,
    "keys.js" => JS,
    "usage.js" => JS,
    "tokens.js" => JS,
    "config.js" => JS,
    "sql.js" => JS,
    "security.js" => JS,
    "uplot.iife.min.js" => JS,
    "uplot.min.css" => "text/css; charset=utf-8",
    "LICENSE-uplot" => "text/plain; charset=utf-8",
];

/// `GET /ui/` (`asset` empty) and `GET /ui/{asset}`: the file, or 404 for any other name.
pub fn serve(asset: &str, if_none_match: Option<&str>) -> Response<Vec<u8>> {
    let name = if asset.is_empty() {
        "index.html"
    } else {
        asset
    };
    let Some(a) = ASSETS.iter().find(|a| a.name == name) else {
        return with_policy(Response::builder().status(404))
            .header("content-type", "text/plain; charset=utf-8")
            .body(b"no such console file\n".to_vec())
            .expect("valid response");
    };
    let etag = etag(a.body);
    if if_none_match.is_some_and(|v| v.split(',').any(|t| t.trim() == etag)) {
        return with_policy(Response::builder().status(304))
            .header("etag", &etag)
            .body(Vec::new())
            .expect("valid response");
    }
    with_policy(Response::builder().status(200))
        .header("content-type", a.content_type)
        .header("content-length", a.body.len())
        .header("etag", etag)
        .body(a.body.to_vec())
        .expect("valid response")
}

/// `GET /`: to the console.
pub fn redirect() -> Response<Vec<u8>> {
    with_policy(Response::builder().status(302))
        .header("location", "/ui/")
        .header("content-length", 0)
        .body(Vec::new())
        .expect("valid response")
}

/// The headers every console answer carries. Files are revalidated on every load (`no-cache`
/// with an ETag) so a new release is never mixed with an old page.
fn with_policy(b: http::response::Builder) -> http::response::Builder {
    b.header("content-security-policy", CSP)
        .header("x-frame-options", "DENY")
        .header("x-content-type-options", "nosniff")
        .header("referrer-policy", "no-referrer")
        .header("cross-origin-opener-policy", "same-origin")
        .header("cross-origin-resource-policy", "same-origin")
        .header("cache-control", "no-cache")
}

fn etag(body: &[u8]) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(body);
    format!("\"{}\"", hex::encode(&d[..12]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_is_served_with_the_policy_and_nothing_else_is() {
        for a in ASSETS {
            let r = serve(a.name, None);
            assert_eq!(r.status(), 200, "{}", a.name);
            assert_eq!(r.headers()["content-security-policy"], CSP);
            assert_eq!(r.headers()["x-frame-options"], "DENY");
            assert_eq!(r.headers()["content-type"], a.content_type);
            let tag = r.headers()["etag"].to_str().unwrap().to_string();
            assert_eq!(serve(a.name, Some(&tag)).status(), 304);
        }
        assert_eq!(serve("", None).body(), serve("index.html", None).body());
        for bad in [
            "x.js",
            "../Cargo.toml",
            "index.html.bak",
            "APP.JS",
            "console",
        ] {
            assert_eq!(serve(bad, None).status(), 404, "{bad}");
        }
    }

    /// No inline script or style, no eval, no string-built HTML in the console's own code
    /// (the policy would block them, and text from the API must never become markup).
    #[test]
    fn the_console_has_no_inline_code_or_html_sinks() {
        let html = std::str::from_utf8(serve("", None).body())
            .unwrap()
            .to_string();
        assert!(
            !html.contains("<script>") && !html.contains("style="),
            "{html}"
        );
        for a in ASSETS
            .iter()
            .filter(|a| a.name.ends_with(".js") && !a.name.starts_with("uplot"))
        {
            let src = std::str::from_utf8(a.body).unwrap();
            for sink in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "eval(",
                "new Function",
                "document.write",
                "localStorage",
                "setAttribute('style'",
            ] {
                assert!(!src.contains(sink), "{} uses {sink}", a.name);
            }
        }
    }
}
