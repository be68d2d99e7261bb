//! What an admin request must show before its route runs: a `Host` naming this listener, no
//! foreign `Origin`, a JSON (or YAML) body type for changes, and the route's access.

use pingora::protocols::http::ServerSession;

use super::routes::{Access, Route};
use super::{client_ip, error};
use crate::runtime::Runtime;

type Refusal = Box<http::Response<Vec<u8>>>;

fn header<'a>(session: &'a ServerSession, name: &str) -> Option<&'a str> {
    session
        .req_header()
        .headers
        .get(name)
        .map(|v| v.to_str().unwrap_or("\u{fffd}"))
}

/// `Host` and `Origin`: a browser page from another site (or a DNS name rebound to this
/// address) is refused whatever the route.
pub fn same_site(
    session: &ServerSession,
    rt: &Runtime,
    tls: Option<&crate::tls::CertStore>,
) -> Result<(), Refusal> {
    let m = &rt.config.metrics;
    let host = header(session, "host");
    // The names the listener's certificate is for are its own too.
    let mut names = m.allowed_hosts.clone();
    if m.tls
        && let Some(t) = tls
    {
        names.extend(t.info().names);
    }
    if let Some(h) = host
        && !crate::config::host_names_listener(h, &m.host, m.prometheus_port, &names)
    {
        return Err(Box::new(error(
            421,
            "the Host header does not name this admin listener (list the name in metrics.allowed_hosts)",
        )));
    }
    if let Some(origin) = header(session, "origin") {
        let own = host.is_some_and(|h| {
            origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                .is_some_and(|o| o.eq_ignore_ascii_case(h))
        });
        if !own {
            return Err(Box::new(error(
                403,
                "cross-origin requests are not accepted by the admin listener",
            )));
        }
    }
    if header(session, "sec-fetch-site").is_some_and(|s| s == "cross-site") {
        return Err(Box::new(error(
            403,
            "cross-site requests are not accepted by the admin listener",
        )));
    }
    Ok(())
}

/// Changes carry JSON (a config may be YAML): types a cross-site form cannot send without a
/// preflight, which this listener never answers.
pub fn body_type(session: &ServerSession, route: &Route) -> Result<(), Refusal> {
    // DELETE carries no body (and, like PUT, no page can send it cross-site unpreflighted).
    if matches!(route.method, "GET" | "HEAD" | "DELETE") {
        return Ok(());
    }
    let media = header(session, "content-type")
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let yaml = matches!(route.path, "/api/config" | "/api/config/validate")
        && matches!(
            media.as_str(),
            "application/yaml" | "application/x-yaml" | "text/yaml"
        );
    if media == "application/json" || yaml {
        return Ok(());
    }
    Err(Box::new(error(
        415,
        "send the body as application/json (content-type header)",
    )))
}

/// Who may call: `Ok(Some(sub))` with auth on, `Ok(None)` for public routes or a loopback
/// listener without auth.
pub fn caller(
    app: &super::AdminApp,
    session: &ServerSession,
    rt: &Runtime,
    route: &Route,
) -> Result<Option<String>, Refusal> {
    if route.access == Access::Public {
        return Ok(None);
    }
    let Some(verifier) = rt.auth.as_ref() else {
        if crate::config::is_loopback_host(&rt.config.metrics.host) {
            return Ok(None);
        }
        return Err(Box::new(error(
            403,
            "the admin API needs auth.enabled, or an admin listener bound to loopback",
        )));
    };
    let token = header(session, "authorization")
        .and_then(|v| {
            let (scheme, t) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| t.trim())
        })
        .unwrap_or("");
    let refuse = |status: u16, reason: &'static str, msg: &str| {
        app.shared
            .metrics
            .auth_failures
            .with_label_values(&[reason])
            .inc();
        tracing::info!(target: "gemini_proxy::security", reason, client_ip = ?client_ip(session), "admin API call refused");
        app.shared.audit(crate::audit::security_event(
            &format!("admin API refused: {reason}"),
            "Blocked",
            client_ip(session).map(|ip| ip.to_string()),
            serde_json::json!({"route": route.path, "method": route.method}),
        ));
        let mut r = error(status, msg);
        if status == 401 {
            r.headers_mut()
                .insert("www-authenticate", http::HeaderValue::from_static("Bearer"));
        }
        Err(Box::new(r))
    };
    match verifier.verify(token) {
        Ok(c) if c.role.as_deref() == Some("admin") => Ok(Some(c.sub)),
        Ok(_) => refuse(
            403,
            "not_admin",
            "the admin API needs a token with role admin",
        ),
        Err(e) => refuse(401, e.reason(), e.message()),
    }
}
