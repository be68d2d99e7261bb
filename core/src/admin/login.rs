//! `POST /auth/login {"password": "..."}` → an admin token, with a lockout that bounds guesses.
//!
//! At most [`MAX_GUESSES`] wrong passwords per client (an IPv4 address, or an IPv6 /64) are
//! evaluated in [`WINDOW`]; guesses still being checked count, so a burst of parallel
//! connections gets no more tries than a patient client. Then the client is locked out for
//! [`LOCKOUT`]. Password hashes are verified on a blocking thread, never on an async worker.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use gemini_proxy_sdk::Role;
use http::Response;
use pingora::protocols::http::ServerSession;
use serde_json::json;

use super::{AdminApp, client_ip, error, json_response, read_body};

pub const MAX_GUESSES: u32 = 5;
pub const WINDOW: Duration = Duration::from_secs(15 * 60);
pub const LOCKOUT: Duration = Duration::from_secs(15 * 60);
/// Clients remembered at most (expired entries go first).
const MAX_CLIENTS: usize = 10_000;

#[derive(Clone, Copy)]
struct Guesses {
    failed: u32,
    checking: u32,
    since: Instant,
    locked_until: Option<Instant>,
}

/// Per-client guess counts.
#[derive(Default)]
pub struct Lockout {
    clients: parking_lot::Mutex<HashMap<IpAddr, Guesses>>,
}

/// The unit a lockout applies to: an IPv6 client is its /64 (one subscriber's range).
fn client_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

enum Admit {
    Go,
    Wait(Duration),
}

impl Lockout {
    fn admit(&self, who: IpAddr, now: Instant) -> Admit {
        let mut clients = self.clients.lock();
        if clients.len() >= MAX_CLIENTS && !clients.contains_key(&who) {
            clients.retain(|_, g| {
                g.checking > 0
                    || g.locked_until.is_some_and(|u| u > now)
                    || now.duration_since(g.since) < WINDOW
            });
            if clients.len() >= MAX_CLIENTS {
                // Still full of live entries: forget the oldest unlocked ones.
                let mut ages: Vec<Instant> = clients
                    .values()
                    .filter(|g| g.locked_until.is_none() && g.checking == 0)
                    .map(|g| g.since)
                    .collect();
                ages.sort_unstable();
                if let Some(cut) = ages.get(ages.len() / 2).copied() {
                    clients
                        .retain(|_, g| g.locked_until.is_some() || g.checking > 0 || g.since > cut);
                }
            }
        }
        let g = clients.entry(who).or_insert(Guesses {
            failed: 0,
            checking: 0,
            since: now,
            locked_until: None,
        });
        if let Some(until) = g.locked_until {
            if until > now {
                return Admit::Wait(until - now);
            }
            *g = Guesses {
                failed: 0,
                checking: g.checking,
                since: now,
                locked_until: None,
            };
        }
        if now.duration_since(g.since) > WINDOW && g.checking == 0 {
            g.failed = 0;
            g.since = now;
        }
        if g.failed + g.checking >= MAX_GUESSES {
            // Guesses in flight already use up what is left: wait for them.
            return Admit::Wait(Duration::from_secs(1));
        }
        g.checking += 1;
        Admit::Go
    }

    /// Ends a guess; returns the failures so far and whether this one locked the client out.
    fn settle(&self, who: IpAddr, wrong: bool, now: Instant) -> (u32, bool) {
        let mut clients = self.clients.lock();
        let Some(g) = clients.get_mut(&who) else {
            return (0, false);
        };
        g.checking = g.checking.saturating_sub(1);
        if !wrong {
            if g.checking == 0 {
                clients.remove(&who);
            }
            return (0, false);
        }
        g.failed += 1;
        let locked = g.failed >= MAX_GUESSES && g.locked_until.is_none();
        if locked {
            g.locked_until = Some(now + LOCKOUT);
        }
        (g.failed, locked)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.clients.lock().len()
    }
}

/// Releases a reserved guess if the handler returns early (bad body, client gone).
struct Reserved<'a> {
    lockout: &'a Lockout,
    who: IpAddr,
    settled: bool,
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        if !self.settled {
            let mut clients = self.lockout.clients.lock();
            if let Some(g) = clients.get_mut(&self.who) {
                g.checking = g.checking.saturating_sub(1);
            }
        }
    }
}

fn too_many(wait: Duration) -> Response<Vec<u8>> {
    let wait = wait.as_secs().max(1);
    let mut r = error(429, format!("too many failed logins; try again in {wait}s"));
    r.headers_mut().insert(
        "retry-after",
        http::HeaderValue::from_str(&wait.to_string()).expect("digits"),
    );
    r
}

impl AdminApp {
    pub(super) async fn login(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let rt = self.shared.runtime.load_full();
        let ip = client_ip(session).unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let who = client_of(ip);
        if let Admit::Wait(d) = self.lockout.admit(who, Instant::now()) {
            return too_many(d);
        }
        let mut reserved = Reserved {
            lockout: &self.lockout,
            who,
            settled: false,
        };
        let body = match read_body(session, &self.shared).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        #[derive(serde::Deserialize)]
        struct Login {
            password: String,
        }
        let Ok(login) = serde_json::from_slice::<Login>(&body) else {
            return error(400, "expected {\"password\": \"...\"}");
        };
        let a = &rt.config.auth;
        if !a.enabled || a.jwt_secret.is_none() {
            return error(503, "admin login needs auth.enabled and auth.jwt_secret");
        }
        let (hash, plain) = (a.admin_password_hash.clone(), a.admin_password.clone());
        if hash.is_none() && plain.is_none() {
            return error(503, "no admin password is configured");
        }
        // Only a password about to be checked uses up one of the client's guesses cluster-wide.
        if let Some(d) = super::login_shared::reserve(&self.shared, who).await {
            return too_many(d);
        }
        let ok = tokio::task::spawn_blocking(move || match (hash, plain) {
            (Some(hash), _) => verify_hash(&hash, &login.password),
            (None, Some(pw)) => constant_time_eq(&pw, &login.password),
            (None, None) => false,
        })
        .await
        .unwrap_or(false);
        reserved.settled = true;
        let (failures, locked) = self.lockout.settle(who, !ok, Instant::now());
        super::login_shared::settle(&self.shared, who, ok);
        if !ok {
            self.refused(ip, failures, locked).await;
            return error(401, "wrong password");
        }
        let ttl = a.token_ttl.0;
        let claims = gemini_proxy_plugins::auth::new_claims("admin", Role::Admin, ttl, vec![]);
        match rt.config.auth.sign(claims) {
            Ok(token) => {
                tracing::info!(target: "gemini_proxy::security", client_ip = %ip, "admin logged in");
                json_response(
                    200,
                    &json!({"token": token, "token_type": "Bearer", "expires_in": ttl.as_secs()}),
                )
            }
            Err(e) => error(500, e),
        }
    }

    async fn refused(&self, ip: IpAddr, failures: u32, locked: bool) {
        if locked {
            tracing::warn!(target: "gemini_proxy::security", client_ip = %ip, "admin login locked out after repeated failures");
            self.shared.audit(crate::audit::security_event(
                "admin login lockout",
                "Blocked",
                Some(ip.to_string()),
                json!({"failures": failures, "lockout_s": LOCKOUT.as_secs()}),
            ));
        }
        self.shared
            .metrics
            .auth_failures
            .with_label_values(&["bad_password"])
            .inc();
        self.shared.audit(crate::audit::security_event(
            "admin login failed",
            "Failure",
            Some(ip.to_string()),
            json!({"failures": failures}),
        ));
        // Slow down guessing: 100 ms, doubling, at most 1.6 s.
        tokio::time::sleep(Duration::from_millis(
            100 << failures.min(5).saturating_sub(1),
        ))
        .await;
    }
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    // Comparing digests keeps the time independent of where the strings differ and of length.
    let (x, y) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    x.ct_eq(&y).into()
}

fn verify_hash(hash: &str, password: &str) -> bool {
    use argon2::PasswordVerifier;
    argon2::PasswordHash::new(hash).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guesses_in_flight_count_against_the_limit() {
        let l = Lockout::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let now = Instant::now();
        // Twenty parallel guesses: only five are let through to the password check.
        let admitted = (0..20)
            .filter(|_| matches!(l.admit(ip, now), Admit::Go))
            .count();
        assert_eq!(admitted, MAX_GUESSES as usize);
        for i in 0..MAX_GUESSES {
            let (n, locked) = l.settle(ip, true, now);
            assert_eq!(n, i + 1);
            assert_eq!(locked, i + 1 == MAX_GUESSES);
        }
        assert!(matches!(l.admit(ip, now), Admit::Wait(d) if d > Duration::from_secs(800)));
        // After the lockout, a fresh window.
        assert!(matches!(
            l.admit(ip, now + LOCKOUT + Duration::from_secs(1)),
            Admit::Go
        ));
    }

    #[test]
    fn ipv6_clients_are_their_64_and_the_map_stays_bounded() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert_eq!(client_of(a), client_of(b));
        let l = Lockout::default();
        let now = Instant::now();
        for i in 0..(MAX_CLIENTS as u32 * 3) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert!(matches!(l.admit(ip, now), Admit::Go));
            l.settle(ip, true, now);
        }
        assert!(l.len() <= MAX_CLIENTS, "{}", l.len());
    }
}
