//! The admin listener's one route table: method, exact path, who may call it. Anything not in
//! it is 404 (405 when only the method differs). Paths are checked for shape before matching:
//! no `//`, no dot segments, no `%` escapes, no `;`, no trailing `/`, no backslash, so no
//! spelling of a path can mean one route to the router and another to a check.

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Monitoring and login: no credential (what the product promises to monitoring tools).
    Public,
    /// An admin token (with auth on); without auth, a loopback admin listener only.
    Admin,
}

/// What a route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Health,
    Metrics,
    Performance,
    Errors,
    Login,
    Keys,
    AddKey,
    RemoveKey,
    DisableKey,
    EnableKey,
    ResetKey,
    ProbeKey,
    Presets,
    ApplyPreset,
    IssueToken,
    RevokeToken,
    Security,
    Config,
    PutConfig,
    ConfigHistory,
    Rollback,
    Sql,
    SqlSchema,
    Export,
    Cluster,
    /// `GET /`: to the console.
    ConsoleRoot,
    /// The console's embedded files.
    Console,
    Timeline,
    ValidateConfig,
}

pub struct Route {
    pub method: &'static str,
    /// Exact segments; `{id}` (and `{asset}`) matches one segment of key-id characters.
    pub path: &'static str,
    pub access: Access,
    pub op: Op,
}

const fn r(method: &'static str, path: &'static str, access: Access, op: Op) -> Route {
    Route {
        method,
        path,
        access,
        op,
    }
}

use Access::{Admin, Public};

pub const ROUTES: &[Route] = &[
    r("GET", "/health", Public, Op::Health),
    r("GET", "/healthz", Public, Op::Health),
    r("GET", "/metrics", Public, Op::Metrics),
    r("GET", "/performance", Public, Op::Performance),
    r("GET", "/errors", Public, Op::Errors),
    r("POST", "/auth/login", Public, Op::Login),
    r("GET", "/", Public, Op::ConsoleRoot),
    r("GET", "/ui/", Public, Op::Console),
    r("GET", "/ui/{asset}", Public, Op::Console),
    r("GET", "/api/timeline", Admin, Op::Timeline),
    r("GET", "/api/cluster", Admin, Op::Cluster),
    r("GET", "/api/keys", Admin, Op::Keys),
    r("POST", "/api/keys", Admin, Op::AddKey),
    r("DELETE", "/api/keys/{id}", Admin, Op::RemoveKey),
    r("POST", "/api/keys/{id}/disable", Admin, Op::DisableKey),
    r("POST", "/api/keys/{id}/enable", Admin, Op::EnableKey),
    r("POST", "/api/keys/{id}/reset", Admin, Op::ResetKey),
    r("POST", "/api/keys/{id}/probe", Admin, Op::ProbeKey),
    r("GET", "/api/weights/presets", Admin, Op::Presets),
    r("POST", "/api/weights/apply", Admin, Op::ApplyPreset),
    r("POST", "/api/tokens", Admin, Op::IssueToken),
    r("POST", "/api/tokens/revoke", Admin, Op::RevokeToken),
    r("GET", "/api/security", Admin, Op::Security),
    r("GET", "/api/config", Admin, Op::Config),
    r("PUT", "/api/config", Admin, Op::PutConfig),
    r("POST", "/api/config/validate", Admin, Op::ValidateConfig),
    r("GET", "/api/config/history", Admin, Op::ConfigHistory),
    r("POST", "/api/config/rollback", Admin, Op::Rollback),
    r("POST", "/api/sql", Admin, Op::Sql),
    r("GET", "/api/sql/schema", Admin, Op::SqlSchema),
    r("POST", "/api/export", Admin, Op::Export),
];

/// Why a request matched no route.
#[derive(Debug, PartialEq, Eq)]
pub enum Miss {
    /// The path is not spelled the one way routes are (refused before matching).
    BadPath,
    NotFound,
    /// The path exists with other methods.
    Method,
}

/// A path shape the router accepts: `/`-separated segments of visible ASCII other than `%`,
/// `;` and `\`, none empty, `.` or `..` (the console's own `/ui/` is the one trailing `/`).
pub fn path_is_plain(path: &str) -> bool {
    if path == "/" || path == "/ui/" {
        return true;
    }
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    rest.split('/').all(|seg| {
        !seg.is_empty()
            && seg != "."
            && seg != ".."
            && seg
                .bytes()
                .all(|b| b.is_ascii_graphic() && !matches!(b, b'%' | b';' | b'\\'))
    })
}

/// Key ids in paths: what the config accepts as an id.
fn id_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && s != "."
        && s != ".."
}

fn matches<'p>(pattern: &str, path: &'p str) -> Option<Option<&'p str>> {
    let mut id = None;
    let mut want = pattern.split('/');
    let mut got = path.split('/');
    loop {
        match (want.next(), got.next()) {
            (None, None) => return Some(id),
            (Some("{id}" | "{asset}"), Some(seg)) if id_segment(seg) => id = Some(seg),
            (Some(w), Some(g)) if w == g => {}
            _ => return None,
        }
    }
}

/// The route for `method path` and the `{id}` it holds. `HEAD` is served as `GET`.
pub fn find<'p>(method: &str, path: &'p str) -> Result<(&'static Route, Option<&'p str>), Miss> {
    if !path_is_plain(path) {
        return Err(Miss::BadPath);
    }
    let method = if method == "HEAD" { "GET" } else { method };
    let mut other_method = false;
    for route in ROUTES {
        if let Some(id) = matches(route.path, path) {
            if route.method == method {
                return Ok((route, id));
            }
            other_method = true;
        }
    }
    Err(if other_method {
        Miss::Method
    } else {
        Miss::NotFound
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_paths_only() {
        assert_eq!(find("GET", "/api/keys").unwrap().0.op, Op::Keys);
        assert_eq!(find("HEAD", "/health").unwrap().0.op, Op::Health);
        let (r, id) = find("POST", "/api/keys/primary.2/disable").unwrap();
        assert_eq!((r.op, id), (Op::DisableKey, Some("primary.2")));
        for bad in [
            "//api/tokens",
            "/api//keys",
            "/api/keys/",
            "/./api/keys",
            "/api/../api/keys",
            "/api/%6Beys",
            "/api/keys;x",
            "/api/keys\\x",
            "api/keys",
            "",
            "/api/keys/a b",
        ] {
            assert_eq!(find("GET", bad).err(), Some(Miss::BadPath), "{bad:?}");
        }
        assert_eq!(find("GET", "/api/KEYS").err(), Some(Miss::NotFound));
        let (r, asset) = find("GET", "/ui/").unwrap();
        assert_eq!((r.path, r.op, asset), ("/ui/", Op::Console, None));
        assert_eq!(find("GET", "/ui/app.js").unwrap().1, Some("app.js"));
        for bad in [
            "/ui//app.js",
            "/ui/../api/keys",
            "/ui/%61pp.js",
            "/ui/a/",
            "/ui/..",
        ] {
            assert_eq!(find("GET", bad).err(), Some(Miss::BadPath), "{bad:?}");
        }
        assert_eq!(find("GET", "/ui/a/b.js").err(), Some(Miss::NotFound));
        assert_eq!(find("POST", "/ui/app.js").err(), Some(Miss::Method));
        assert_eq!(find("GET", "/api/keys/x/disable").err(), Some(Miss::Method));
        assert_eq!(find("DELETE", "/api/config").err(), Some(Miss::Method));
        assert_eq!(
            find("POST", "/api/keys/../disable").err(),
            Some(Miss::BadPath)
        );
        assert_eq!(
            find("POST", "/api/keys/a/b/disable").err(),
            Some(Miss::NotFound)
        );
        // Every admin-only route is in the table as Admin; the public set is exactly this.
        let public: Vec<&str> = ROUTES
            .iter()
            .filter(|r| r.access == Access::Public)
            .map(|r| r.path)
            .collect();
        assert_eq!(
            public,
            [
                "/health",
                "/healthz",
                "/metrics",
                "/performance",
                "/errors",
                "/auth/login",
                "/",
                "/ui/",
                "/ui/{asset}"
            ]
        );
        assert!(
            ROUTES
                .iter()
                .filter(|r| r.path.starts_with("/api/"))
                .all(|r| r.access == Access::Admin)
        );
    }

    /// Random and mutated paths never panic, and whatever matches is a plain path that is
    /// exactly a table entry (the stable stand-in for a fuzzer on the router).
    #[test]
    fn random_paths_match_only_table_entries() {
        let seeds = [
            "/api/keys/a/disable",
            "//api/tokens",
            "/api/sql",
            "/auth/login",
            "/api/config/rollback",
            "/%2e%2e/api/keys",
            "/ui/app.js",
            "/ui/",
        ];
        const ALPHABET: &[u8] = b"/.%;\\?#:@ aAkK09-_\x00\xff";
        let mut state: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for i in 0..50_000 {
            let mut p = seeds[i % seeds.len()].as_bytes().to_vec();
            for _ in 0..(next() % 6) {
                let r = next();
                let pos = (r as usize >> 8) % (p.len() + 1);
                match r % 3 {
                    0 => p.insert(pos, ALPHABET[(r >> 40) as usize % ALPHABET.len()]),
                    1 if pos < p.len() => {
                        p.remove(pos);
                    }
                    _ if pos < p.len() => p[pos] = (r >> 32) as u8,
                    _ => {}
                }
            }
            let path = String::from_utf8_lossy(&p);
            for m in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
                if let Ok((route, id)) = find(m, &path) {
                    assert!(path_is_plain(&path), "{path:?}");
                    let rebuilt = match id {
                        Some(id) => route.path.replace("{id}", id).replace("{asset}", id),
                        None => route.path.to_string(),
                    };
                    assert_eq!(rebuilt, path, "{m} {path:?} matched {}", route.path);
                }
            }
        }
    }
}
