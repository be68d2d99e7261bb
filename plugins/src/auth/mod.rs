//! `auth`: JWT authentication and model permissions.
//!
//! The token arrives where real clients put their credential (`Authorization: Bearer`,
//! `x-goog-api-key`, `?key=`; the gateway has already lifted it out of the request). Each
//! verification key pins its algorithm, so `alg: none` and HS/RS confusion fail; `exp` is
//! required, `nbf` honoured, both with a small leeway; `iss`/`aud` are checked when configured;
//! several keys can be active at once, chosen by the token's `kid`, so the signing secret can
//! rotate without logging anyone out. Revoked token ids (`jti`) are refused.
//!
//! Claims: `sub` (required), `role` (`user` or `admin`), `models` (globs the caller may use),
//! `limits` (per-user rate limits, read by the `rate_limit` stage), `jti`.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gemini_proxy_sdk::{
    Admission, BuildEnv, CredentialSource, Identity, Phases, Plugin, PluginError, PluginFactory,
    Rejection, RequestContext, Role,
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

mod ephemeral;
mod revocations;
pub use revocations::Revocations;

/// One verification key.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VerifyKey {
    /// Matched against the token header's `kid`.
    pub kid: String,
    /// `HS256`, `HS384`, `HS512`, `RS256`, `ES256` or `EdDSA`.
    pub algorithm: String,
    /// Shared secret (HS*).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// PEM public key (RS256, ES256, EdDSA), inline or a file path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
}

/// Config of the `auth` stage (the gateway fills it from the top-level `auth:` section).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AuthStageConfig {
    /// The default HMAC secret (tokens without `kid`).
    #[serde(default)]
    pub jwt_secret: Option<String>,
    /// Its algorithm: `HS256` (default), `HS384`, `HS512`.
    #[serde(default)]
    pub algorithm: Option<String>,
    /// More keys, chosen by `kid`.
    #[serde(default)]
    pub keys: Vec<VerifyKey>,
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub audience: Option<String>,
    /// Clock skew allowed on `exp`/`nbf`, seconds (default 30).
    #[serde(default)]
    pub leeway_seconds: Option<u64>,
    /// File of revoked token ids (kept by the admin API).
    #[serde(default)]
    pub revocations_file: Option<String>,
}

/// Per-user limits a token may carry.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq)]
pub struct TokenLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrent_streams: Option<u64>,
}

impl TokenLimits {
    /// Limits a token may carry: each at least 1 (a limit of 0 would mean no call at all, which
    /// is what revoking the token is for).
    pub fn check(&self) -> Result<(), String> {
        for (name, v) in [
            ("rpm", self.rpm),
            ("tpm", self.tpm),
            ("concurrent_streams", self.concurrent_streams),
        ] {
            if v == Some(0) {
                return Err(format!("limits.{name} must be at least 1"));
            }
        }
        Ok(())
    }
}

/// The claims the gateway reads and writes.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct Claims {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<TokenLimits>,
    /// The tenant the caller acts for: resources it creates are the tenant's (default: `sub`'s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

/// Why a token was refused (`auth_failures_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Malformed,
    UnknownKey,
    AlgorithmNotAllowed,
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    Revoked,
    BadRole,
}

impl AuthError {
    pub fn reason(self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed => "malformed",
            AuthError::UnknownKey => "unknown_key",
            AuthError::AlgorithmNotAllowed => "algorithm",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::WrongIssuer => "issuer",
            AuthError::WrongAudience => "audience",
            AuthError::Revoked => "revoked",
            AuthError::BadRole => "bad_role",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            AuthError::Missing => "missing credential: send a gateway token",
            AuthError::Malformed => "the credential is not a valid token",
            AuthError::UnknownKey => "the token's key id is not known",
            AuthError::AlgorithmNotAllowed => "the token's algorithm is not allowed for its key",
            AuthError::BadSignature => "the token's signature is invalid",
            AuthError::Expired => "the token has expired",
            AuthError::NotYetValid => "the token is not valid yet",
            AuthError::WrongIssuer => "the token's issuer is not accepted",
            AuthError::WrongAudience => "the token's audience is not accepted",
            AuthError::Revoked => "the token has been revoked",
            AuthError::BadRole => "the token's role is not user or admin",
        }
    }
}

fn parse_alg(s: &str) -> Result<Algorithm, String> {
    Ok(match s {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "RS256" => Algorithm::RS256,
        "ES256" => Algorithm::ES256,
        "EdDSA" => Algorithm::EdDSA,
        other => {
            return Err(format!(
                "algorithm `{other}` is not one of HS256 HS384 HS512 RS256 ES256 EdDSA"
            ));
        }
    })
}

struct Key {
    alg: Algorithm,
    decoding: DecodingKey,
}

/// Verifies gateway tokens. Built once per config load.
pub struct Verifier {
    /// Tokens already verified, with their claims: a hit skips the signature check (the
    /// token bytes are compared in full; expiry, not-before and revocation are checked on
    /// every call).
    cache: parking_lot::Mutex<HashMap<String, Claims>>,
    default: Option<Key>,
    by_kid: HashMap<String, Key>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: u64,
    revocations: Arc<Revocations>,
}

impl Verifier {
    /// Builds a verifier; paths in the config are relative to `dir`.
    pub fn new(c: &AuthStageConfig, dir: &Path) -> Result<Verifier, String> {
        let default = match &c.jwt_secret {
            Some(secret) => {
                let alg = parse_alg(c.algorithm.as_deref().unwrap_or("HS256"))?;
                if !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
                    return Err(
                        "algorithm: jwt_secret is an HMAC secret: use HS256, HS384 or HS512".into(),
                    );
                }
                Some(Key {
                    alg,
                    decoding: DecodingKey::from_secret(secret.as_bytes()),
                })
            }
            None => None,
        };
        let mut by_kid = HashMap::new();
        for (i, k) in c.keys.iter().enumerate() {
            let alg = parse_alg(&k.algorithm).map_err(|e| format!("keys[{i}].{e}"))?;
            let decoding = match alg {
                Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                    let s = k
                        .secret
                        .as_ref()
                        .ok_or_else(|| format!("keys[{i}]: an HS key needs `secret`"))?;
                    DecodingKey::from_secret(s.as_bytes())
                }
                _ => {
                    let pem = k
                        .public_key
                        .as_ref()
                        .ok_or_else(|| format!("keys[{i}]: this algorithm needs `public_key`"))?;
                    let pem = if pem.contains("-----BEGIN") {
                        pem.clone().into_bytes()
                    } else {
                        std::fs::read(dir.join(pem))
                            .map_err(|e| format!("keys[{i}].public_key: cannot read {pem}: {e}"))?
                    };
                    match alg {
                        Algorithm::RS256 => DecodingKey::from_rsa_pem(&pem),
                        Algorithm::ES256 => DecodingKey::from_ec_pem(&pem),
                        _ => DecodingKey::from_ed_pem(&pem),
                    }
                    .map_err(|e| format!("keys[{i}].public_key: not a usable PEM key: {e}"))?
                }
            };
            if by_kid
                .insert(k.kid.clone(), Key { alg, decoding })
                .is_some()
            {
                return Err(format!("keys[{i}].kid: `{}` is listed twice", k.kid));
            }
        }
        if default.is_none() && by_kid.is_empty() {
            return Err("no verification key: set auth.jwt_secret (or auth.keys)".into());
        }
        let revocations =
            Revocations::for_file(c.revocations_file.as_ref().map(|f| dir.join(f)).as_deref())?;
        Ok(Verifier {
            cache: parking_lot::Mutex::new(HashMap::new()),
            default,
            by_kid,
            issuer: c.issuer.clone(),
            audience: c.audience.clone(),
            leeway: c.leeway_seconds.unwrap_or(30),
            revocations,
        })
    }

    /// The revocation list this verifier consults.
    pub fn revocations(&self) -> &Arc<Revocations> {
        &self.revocations
    }

    /// Verifies a token and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let cached = self.cache.lock().get(token).cloned();
        if let Some(claims) = cached {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            if claims.exp + self.leeway <= now {
                self.cache.lock().remove(token);
                return Err(AuthError::Expired);
            }
            if claims.nbf.is_some_and(|n| n > now + self.leeway) {
                return Err(AuthError::NotYetValid);
            }
            if let Some(jti) = &claims.jti
                && self.revocations.contains(jti)
            {
                return Err(AuthError::Revoked);
            }
            return Ok(claims);
        }
        let claims = self.verify_uncached(token)?;
        let mut cache = self.cache.lock();
        if cache.len() >= TOKEN_CACHE {
            cache.clear();
        }
        cache.insert(token.to_string(), claims.clone());
        Ok(claims)
    }

    fn verify_uncached(&self, token: &str) -> Result<Claims, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        let key = match &header.kid {
            Some(kid) => self.by_kid.get(kid).ok_or(AuthError::UnknownKey)?,
            None => self.default.as_ref().ok_or(AuthError::UnknownKey)?,
        };
        // The key decides the algorithm, never the token.
        if header.alg != key.alg {
            return Err(AuthError::AlgorithmNotAllowed);
        }
        let mut v = Validation::new(key.alg);
        v.leeway = self.leeway;
        v.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if self.issuer.is_some() {
            required.push("iss");
        }
        if self.audience.is_some() {
            required.push("aud");
        }
        v.set_required_spec_claims(&required);
        match &self.issuer {
            Some(i) => v.set_issuer(&[i]),
            None => v.iss = None,
        }
        match &self.audience {
            Some(a) => v.set_audience(&[a]),
            None => v.validate_aud = false,
        }
        let data = jsonwebtoken::decode::<Claims>(token, &key.decoding, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::ExpiredSignature => AuthError::Expired,
                K::ImmatureSignature => AuthError::NotYetValid,
                K::InvalidIssuer => AuthError::WrongIssuer,
                K::InvalidAudience => AuthError::WrongAudience,
                K::InvalidSignature => AuthError::BadSignature,
                K::InvalidAlgorithm => AuthError::AlgorithmNotAllowed,
                K::MissingRequiredClaim(c) if c == "iss" => AuthError::WrongIssuer,
                K::MissingRequiredClaim(c) if c == "aud" => AuthError::WrongAudience,
                _ => AuthError::Malformed,
            }
        })?;
        let claims = data.claims;
        if let Some(jti) = &claims.jti
            && self.revocations.contains(jti)
        {
            return Err(AuthError::Revoked);
        }
        if !matches!(claims.role.as_deref(), None | Some("user") | Some("admin")) {
            return Err(AuthError::BadRole);
        }
        if check_subject(&claims.sub).is_err()
            || claims
                .tenant
                .as_deref()
                .is_some_and(|t| check_subject(t).is_err())
        {
            return Err(AuthError::Malformed);
        }
        Ok(claims)
    }
}

/// Longest `sub` accepted.
pub const MAX_SUBJECT: usize = 256;

/// A subject ends up in log lines, audit rows and metrics: no control characters (a newline
/// would forge a log line), not empty, at most [`MAX_SUBJECT`] bytes.
pub fn check_subject(sub: &str) -> Result<(), String> {
    if sub.trim().is_empty() {
        return Err("sub is empty".into());
    }
    if sub.len() > MAX_SUBJECT {
        return Err(format!("sub is longer than {MAX_SUBJECT} bytes"));
    }
    if sub.chars().any(char::is_control) {
        return Err("sub holds control characters".into());
    }
    Ok(())
}

/// Verified tokens remembered per verifier (the cache starts over when full).
const TOKEN_CACHE: usize = 10_000;

/// Signs a token with an HMAC secret. `kid` is set when given (rotation).
pub fn sign(
    secret: &str,
    algorithm: &str,
    kid: Option<&str>,
    claims: &Claims,
) -> Result<String, String> {
    let alg = parse_alg(algorithm)?;
    if !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
        return Err("only HMAC tokens can be signed with a secret".into());
    }
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| e.to_string())
}

/// Claims for a new token: `sub`, role, lifetime, allowed models, a fresh `jti`.
pub fn new_claims(sub: &str, role: Role, ttl: Duration, models: Vec<String>) -> Claims {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Claims {
        sub: sub.to_string(),
        role: Some(role.as_str().to_string()),
        models,
        limits: None,
        tenant: None,
        exp: now + ttl.as_secs(),
        nbf: Some(now),
        iat: Some(now),
        iss: None,
        aud: None,
        jti: Some(format!("{:032x}", rand_u128())),
    }
}

fn rand_u128() -> u128 {
    // Token ids need uniqueness, not secrecy: time and a process counter mixed by a hash.
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(t);
    h.write_u64(n);
    (u128::from(h.finish()) << 64) | (t ^ u128::from(n))
}

/// A token's `models` globs against the call's model, whatever the kind of call once a model
/// is known (a cached content names one in its body). A call of a model-bound kind whose model
/// is unknown is refused for a restricted token, except on OpenAI-style paths before the body
/// (where the model is) has been read.
fn model_allowed(models: &[String], cx: &RequestContext, body_read: bool) -> Result<(), Rejection> {
    let action = cx.request.action;
    if models.is_empty() {
        return Ok(());
    }
    match cx.request.model.as_deref() {
        Some(m) if models.iter().any(|g| gemini_proxy_sdk::glob_match(g, m)) => Ok(()),
        Some(m) => Err(
            Rejection::new(403, format!("model `{m}` is not allowed for this token"))
                .reason("model_not_allowed"),
        ),
        // An ephemeral token is a Google credential of its own: unlocked, it could reach any
        // model, so a restricted token makes only tokens locked to one of its models.
        None if action == gemini_proxy_sdk::Action::CreateAuthToken && body_read => Err(
            Rejection::new(
                403,
                "this token may use only some models: an ephemeral token made with it must be locked to one of them (bidiGenerateContentSetup.model)",
            )
            .reason("model_unknown"),
        ),
        None if !action.model_bound() && action != gemini_proxy_sdk::Action::CreateAuthToken => {
            Ok(())
        }
        None if !body_read
            && matches!(
                action,
                gemini_proxy_sdk::Action::ChatCompletions
                    | gemini_proxy_sdk::Action::Embeddings
                    | gemini_proxy_sdk::Action::CreateAuthToken
            ) =>
        {
            Ok(())
        }
        None => Err(Rejection::new(
            403,
            "this token may use only some models, and this call's model cannot be determined",
        )
        .reason("model_unknown")),
    }
}

/// The `auth` stage.
pub struct Auth {
    verifier: Verifier,
}

impl Auth {
    fn admit_sync(&self, cx: &mut RequestContext) -> Result<(), Rejection> {
        let (claims, role) = match &cx.credential {
            Some(c) if c.source() == CredentialSource::EphemeralToken => {
                (self.vouched(c)?, Role::User)
            }
            c => {
                let token = c.as_ref().map(|c| c.value()).unwrap_or("");
                let claims = self.verifier.verify(token).map_err(|e| {
                    Rejection::new(401, e.message())
                        .reason(e.reason())
                        .header("www-authenticate", "Bearer")
                })?;
                let role = if claims.role.as_deref() == Some("admin") {
                    Role::Admin
                } else {
                    Role::User
                };
                (claims, role)
            }
        };
        model_allowed(&claims.models, cx, false)?;
        let mut id = Identity::new(claims.sub.clone(), role);
        id.claims = serde_json::to_value(&claims).unwrap_or_default();
        cx.identity = Some(id);
        Ok(())
    }
}

#[gemini_proxy_sdk::async_trait]
impl Plugin for Auth {
    fn name(&self) -> &str {
        "auth"
    }

    fn phases(&self) -> Phases {
        Phases::ADMIT | Phases::BODY
    }

    async fn on_admit(&self, cx: &mut RequestContext) -> Result<Admission, PluginError> {
        Ok(match self.admit_sync(cx) {
            Ok(()) => Admission::Continue,
            Err(r) => Admission::Reject(r),
        })
    }

    /// The model of an OpenAI-style call is known now.
    async fn on_body(
        &self,
        cx: &mut RequestContext,
        body: &[u8],
    ) -> Result<Admission, PluginError> {
        let models: Vec<String> = cx
            .identity
            .as_ref()
            .and_then(|i| i.claims.get("models"))
            .and_then(|m| serde_json::from_value(m.clone()).ok())
            .unwrap_or_default();
        let mut verdict = model_allowed(&models, cx, true);
        if verdict.is_ok() && cx.request.action == gemini_proxy_sdk::Action::CreateAuthToken {
            verdict = Self::token_request_allowed(cx, body);
        }
        Ok(match verdict {
            Ok(()) => Admission::Continue,
            Err(r) => Admission::Reject(r),
        })
    }
}

impl PluginFactory for Auth {
    const KIND: &'static str = "auth";
    type Config = AuthStageConfig;

    fn build(config: AuthStageConfig, env: &BuildEnv) -> Result<Arc<dyn Plugin>, PluginError> {
        let verifier = Verifier::new(&config, &env.config_dir).map_err(PluginError::new)?;
        Ok(Arc::new(Auth { verifier }))
    }
}

#[cfg(test)]
mod tests;
