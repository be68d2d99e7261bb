//! Gateway configuration: schema, loading, migration, validation.

mod duration;
mod load;
mod model;
mod redaction;
mod upstream;
mod validate;
mod yaml_shape;

pub use duration::{ConfigDuration, parse_duration};
pub use load::{
    ConfigError, EnvLookup, LoadedConfig, apply_env, first_alias, load_file, load_str, migrate,
    migrated_yaml, process_env,
};
pub use model::*;
pub use redaction::{
    REDACTED, SECRET_FIELDS, looks_redacted, migrated_text, redacted, redacted_yaml,
};
pub use upstream::UpstreamTarget;
pub use validate::{MIN_KEY_LEN, validate};

/// True for `localhost` and loopback addresses: listeners nobody else can reach.
pub fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether a `Host` header value names a listener bound to `listen_host:port`: a loopback name,
/// the bound address itself, any address literal when bound to every interface, or one of
/// `names`. A DNS name that is not listed is refused: that is how a rebinding page in a browser
/// reaches a loopback listener.
pub fn host_names_listener(value: &str, listen_host: &str, port: u16, names: &[String]) -> bool {
    let Some((name, given)) = split_host_port(value.trim()) else {
        return false;
    };
    let port_ok = match given {
        Some(p) => p.parse::<u16>().ok() == Some(port),
        // No port: not what a browser sends to a non-default port, so not a rebinding page.
        None => true,
    };
    if !port_ok || name.is_empty() {
        return false;
    }
    let bare = |h: &str| h.trim_start_matches('[').trim_end_matches(']').to_string();
    let wildcard = matches!(listen_host, "0.0.0.0" | "::" | "[::]");
    is_loopback_host(name)
        || name.eq_ignore_ascii_case(&bare(listen_host))
        || (wildcard && name.parse::<std::net::IpAddr>().is_ok())
        || names.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// `host[:port]` or `[v6][:port]` into the name and the port text.
fn split_host_port(v: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = v.strip_prefix('[') {
        let (name, after) = rest.split_once(']')?;
        return match after {
            "" => Some((name, None)),
            p => Some((name, Some(p.strip_prefix(':')?))),
        };
    }
    match v.split_once(':') {
        Some((_, p)) if p.contains(':') => None,
        Some((h, p)) => Some((h, Some(p))),
        None => Some((v, None)),
    }
}

#[cfg(test)]
mod host_tests {
    use super::host_names_listener as ok;

    #[test]
    fn hosts_that_name_the_listener() {
        let none: &[String] = &[];
        assert!(ok("127.0.0.1:9090", "127.0.0.1", 9090, none));
        assert!(ok("localhost:9090", "127.0.0.1", 9090, none));
        assert!(ok("[::1]:9090", "127.0.0.1", 9090, none));
        assert!(
            !ok("evil.example:9090", "127.0.0.1", 9090, none),
            "rebinding"
        );
        assert!(!ok("127.0.0.1:9091", "127.0.0.1", 9090, none), "other port");
        assert!(ok("127.0.0.1", "127.0.0.1", 9090, none), "no port");
        assert!(!ok("::1:9090", "127.0.0.1", 9090, none), "unbracketed v6");
        assert!(!ok("127.0.0.1:x", "127.0.0.1", 9090, none));
        assert!(!ok(":9090", "127.0.0.1", 9090, none));
        assert!(ok("10.1.2.3:9090", "0.0.0.0", 9090, none));
        assert!(!ok("10.1.2.3:9090", "127.0.0.1", 9090, none));
        assert!(ok("gw.example", "0.0.0.0", 443, &["gw.example".into()]));
        assert!(!ok("gw.example:443", "0.0.0.0", 443, none));
    }
}
