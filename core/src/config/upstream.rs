//! The upstream base URL, parsed once.

/// Where calls go: scheme, host, port and an optional path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTarget {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash ("" for none).
    pub path_prefix: String,
}

impl UpstreamTarget {
    pub fn parse(url: &str) -> Result<UpstreamTarget, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(format!(
                    "`{url}` must start with https:// (or http:// for a local mock)"
                ));
            }
        };
        let host = uri
            .host()
            .ok_or_else(|| format!("`{url}` has no host"))?
            .trim_matches(['[', ']'])
            .to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        if uri.query().is_some() {
            return Err(format!("`{url}` must not carry a query"));
        }
        let path_prefix = uri.path().trim_end_matches('/').to_string();
        Ok(UpstreamTarget {
            tls,
            host,
            port,
            path_prefix,
        })
    }

    /// The `Host` header value for upstream requests.
    pub fn authority(&self) -> String {
        let default = if self.tls { 443 } else { 80 };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_base_urls() {
        let t = UpstreamTarget::parse("https://generativelanguage.googleapis.com").unwrap();
        assert_eq!((t.tls, t.port, t.path_prefix.as_str()), (true, 443, ""));
        assert_eq!(t.authority(), "generativelanguage.googleapis.com");
        let t = UpstreamTarget::parse("http://127.0.0.1:9000/gemini/").unwrap();
        assert_eq!(
            (t.tls, t.port, t.path_prefix.as_str()),
            (false, 9000, "/gemini")
        );
        assert_eq!(t.authority(), "127.0.0.1:9000");
        assert!(UpstreamTarget::parse("ftp://x").is_err());
        assert!(UpstreamTarget::parse("not a url").is_err());
    }
}
