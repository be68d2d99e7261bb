//! How the CLI reaches the running gateway's admin API.

use crate::config::LoadedConfig;

/// One call to the admin listener (plain HTTP: the CLI runs next to the gateway).
/// `Err(None)`: nothing listens there.
pub(super) fn admin_call(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
    timeout: std::time::Duration,
) -> Result<(u16, Vec<u8>), Option<String>> {
    let fail = |e: &dyn std::fmt::Display| Some(format!("admin API at {addr}: {e}"));
    let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| fail(&e))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(&e))?;
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(2))
            .timeout(timeout)
            .no_proxy()
            .build()
            .map_err(|e| fail(&e))?;
        let mut req = client
            .request(method, format!("http://{addr}{path}"))
            .header("content-type", "application/json")
            .body(body.to_vec());
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let answer = req
            .send()
            .await
            .map_err(|e| if refused(&e) { None } else { fail(&e) })?;
        let status = answer.status().as_u16();
        let body = answer.bytes().await.map_err(|e| fail(&e))?;
        Ok((status, body.to_vec()))
    })
}

/// Whether the connection was refused: no gateway runs there.
fn refused(e: &reqwest::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        source = s.source();
    }
    false
}

/// Prints the admin API's error answer; returns the exit code.
pub(super) fn admin_refusal(status: u16, body: &[u8]) -> i32 {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let msg = v["error"]["message"].as_str().unwrap_or("no message");
    eprintln!("error: {status}: {msg}");
    1
}

/// An admin token for the CLI's own calls (signed with the config's secret), if auth is on.
pub(super) fn cli_admin_token(loaded: &LoadedConfig) -> Result<Option<String>, String> {
    let auth = &loaded.config.auth;
    if !auth.enabled {
        return Ok(None);
    }
    if auth.jwt_secret.is_none() {
        return Err("auth is on but auth.jwt_secret (or JWT_SECRET) is not set: the CLI cannot sign an admin token".into());
    }
    let claims = gemini_proxy_plugins::auth::new_claims(
        "cli",
        gemini_proxy_sdk::Role::Admin,
        std::time::Duration::from_secs(300),
        Vec::new(),
    );
    auth.sign(claims).map(Some)
}

pub(super) fn admin_addr_of(loaded: &LoadedConfig) -> Option<String> {
    let m = &loaded.config.metrics;
    m.enabled.then(|| {
        let host = if m.host == "0.0.0.0" || m.host.is_empty() {
            "127.0.0.1"
        } else if m.host == "::" {
            "::1"
        } else {
            m.host.as_str()
        };
        if host.contains(':') {
            format!("[{host}]:{}", m.prometheus_port)
        } else {
            format!("{host}:{}", m.prometheus_port)
        }
    })
}
