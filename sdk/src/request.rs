use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::SystemTime;

use crate::Extensions;

/// Which family of the Gemini API a call belongs to.
///
/// ```
/// use gemini_proxy_sdk::ApiKind;
/// assert_eq!(ApiKind::OpenAi.as_str(), "openai");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ApiKind {
    /// `/{version}/...`: the native Gemini REST API.
    Native,
    /// `/{version}/openai/...`: Gemini's OpenAI-compatible API (Bearer credentials, OpenAI errors).
    OpenAi,
    /// `/upload/{version}/...`: resumable media uploads (streamed, never buffered).
    Upload,
    /// `/ws/...BidiGenerateContent`: a Live API WebSocket session (the model is in its first
    /// message).
    Live,
}

impl ApiKind {
    /// Every family, for code that maps names back (FFI, scripts).
    ///
    /// ```
    /// assert!(gemini_proxy_sdk::ApiKind::ALL.iter().any(|k| k.as_str() == "upload"));
    /// ```
    pub const ALL: [ApiKind; 4] = [
        ApiKind::Native,
        ApiKind::OpenAi,
        ApiKind::Upload,
        ApiKind::Live,
    ];

    /// A short stable name, used in metrics labels and audit rows.
    ///
    /// ```
    /// assert_eq!(gemini_proxy_sdk::ApiKind::Native.as_str(), "native");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            ApiKind::Native => "native",
            ApiKind::OpenAi => "openai",
            ApiKind::Upload => "upload",
            ApiKind::Live => "live",
        }
    }
}

/// What a call does, parsed from its path (the Gemini model and verb live in the path).
///
/// ```
/// use gemini_proxy_sdk::Action;
/// assert!(Action::StreamGenerateContent.is_generation());
/// assert_eq!(Action::CountTokens.as_str(), "countTokens");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Action {
    /// `models/{m}:generateContent`
    GenerateContent,
    /// `models/{m}:streamGenerateContent` (SSE with `alt=sse`, else a JSON array)
    StreamGenerateContent,
    /// `models/{m}:countTokens`
    CountTokens,
    /// `models/{m}:embedContent`
    EmbedContent,
    /// `models/{m}:batchEmbedContents`
    BatchEmbedContents,
    /// Any other `models/{m}:verb` (predict, batchGenerateContent, ...)
    ModelVerb,
    /// `GET models`
    ListModels,
    /// `GET models/{m}`
    GetModel,
    /// `files...`
    Files,
    /// `cachedContents...`
    CachedContents,
    /// `batches...` and `operations...`
    Batches,
    /// `/upload/...` resumable upload (start, chunks, finalize)
    Upload,
    /// OpenAI-compatible `chat/completions`
    ChatCompletions,
    /// OpenAI-compatible `embeddings`
    Embeddings,
    /// OpenAI-compatible `models` (list or get)
    OpenAiModels,
    /// A Live API session (`BidiGenerateContent`, or `...Constrained` with an ephemeral token)
    BidiGenerateContent,
    /// `POST auth_tokens`: an ephemeral token for Live sessions
    CreateAuthToken,
    /// Any other path of a known family, forwarded as is
    Other,
}

impl Action {
    /// Every action, for code that maps names back (FFI, scripts).
    ///
    /// ```
    /// assert!(gemini_proxy_sdk::Action::ALL.iter().any(|a| a.as_str() == "countTokens"));
    /// ```
    pub const ALL: [Action; 18] = [
        Action::GenerateContent,
        Action::StreamGenerateContent,
        Action::CountTokens,
        Action::EmbedContent,
        Action::BatchEmbedContents,
        Action::ModelVerb,
        Action::ListModels,
        Action::GetModel,
        Action::Files,
        Action::CachedContents,
        Action::Batches,
        Action::Upload,
        Action::ChatCompletions,
        Action::Embeddings,
        Action::OpenAiModels,
        Action::BidiGenerateContent,
        Action::CreateAuthToken,
        Action::Other,
    ];

    /// A stable camelCase name, as Gemini spells its verbs.
    ///
    /// ```
    /// assert_eq!(gemini_proxy_sdk::Action::ChatCompletions.as_str(), "chat.completions");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Action::GenerateContent => "generateContent",
            Action::StreamGenerateContent => "streamGenerateContent",
            Action::CountTokens => "countTokens",
            Action::EmbedContent => "embedContent",
            Action::BatchEmbedContents => "batchEmbedContents",
            Action::ModelVerb => "modelVerb",
            Action::ListModels => "models.list",
            Action::GetModel => "models.get",
            Action::Files => "files",
            Action::CachedContents => "cachedContents",
            Action::Batches => "batches",
            Action::Upload => "upload",
            Action::ChatCompletions => "chat.completions",
            Action::Embeddings => "embeddings",
            Action::OpenAiModels => "openai.models",
            Action::BidiGenerateContent => "bidiGenerateContent",
            Action::CreateAuthToken => "authTokens.create",
            Action::Other => "other",
        }
    }

    /// True for calls that a model restriction applies to: those that name a model (in the
    /// path, or in the body on OpenAI-style paths) and those of a kind the gateway cannot see
    /// into ([`Action::Other`], e.g. `tunedModels/...:generateContent`). Files, caches,
    /// batches, uploads and model lists name none.
    ///
    /// ```
    /// use gemini_proxy_sdk::Action;
    /// assert!(Action::ChatCompletions.model_bound() && Action::Other.model_bound());
    /// assert!(!Action::Files.model_bound());
    /// ```
    pub fn model_bound(self) -> bool {
        matches!(
            self,
            Action::GenerateContent
                | Action::StreamGenerateContent
                | Action::CountTokens
                | Action::EmbedContent
                | Action::BatchEmbedContents
                | Action::ModelVerb
                | Action::GetModel
                | Action::ChatCompletions
                | Action::Embeddings
                | Action::BidiGenerateContent
                | Action::Other
        )
    }

    /// True for calls that generate tokens (and so spend generation quota).
    ///
    /// ```
    /// assert!(!gemini_proxy_sdk::Action::ListModels.is_generation());
    /// ```
    pub fn is_generation(self) -> bool {
        matches!(
            self,
            Action::GenerateContent
                | Action::StreamGenerateContent
                | Action::ChatCompletions
                | Action::BidiGenerateContent
        )
    }
}

/// Where the client put its gateway credential.
///
/// ```
/// use gemini_proxy_sdk::CredentialSource;
/// assert_eq!(CredentialSource::Bearer.as_str(), "authorization");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CredentialSource {
    /// The `x-goog-api-key` header (what the Gemini SDKs send).
    GoogApiKeyHeader,
    /// The `key=` query parameter (curl users, older docs).
    QueryKey,
    /// `Authorization: Bearer ...` (what OpenAI clients send).
    Bearer,
    /// An ephemeral token (`auth_tokens/...`) for a Live session, in `Authorization: Token`,
    /// `x-goog-api-key` or `access_token=`: Google's credential, not the gateway's.
    EphemeralToken,
}

impl CredentialSource {
    /// A short name for logs (never the credential itself).
    ///
    /// ```
    /// assert_eq!(gemini_proxy_sdk::CredentialSource::QueryKey.as_str(), "query");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialSource::GoogApiKeyHeader => "x-goog-api-key",
            CredentialSource::QueryKey => "query",
            CredentialSource::Bearer => "authorization",
            CredentialSource::EphemeralToken => "ephemeral-token",
        }
    }
}

/// The credential a client presented to the gateway (a gateway token, never an upstream key).
///
/// The gateway removes it from the request before forwarding. Its `Debug` output is redacted.
///
/// ```
/// use gemini_proxy_sdk::{ClientCredential, CredentialSource};
/// let c = ClientCredential::new(CredentialSource::Bearer, "secret-token");
/// assert_eq!(c.value(), "secret-token");
/// assert!(!format!("{c:?}").contains("secret-token"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct ClientCredential {
    source: CredentialSource,
    value: String,
    vouched: Option<serde_json::Value>,
}

impl ClientCredential {
    /// Wraps a credential value found in `source`.
    ///
    /// ```
    /// use gemini_proxy_sdk::{ClientCredential, CredentialSource};
    /// let _ = ClientCredential::new(CredentialSource::QueryKey, "t");
    /// ```
    pub fn new(source: CredentialSource, value: impl Into<String>) -> Self {
        ClientCredential {
            source,
            value: value.into(),
            vouched: None,
        }
    }

    /// The same credential with the claims of the caller the gateway saw create it (an
    /// ephemeral token made through the gateway). Only the gateway sets this.
    ///
    /// ```
    /// use gemini_proxy_sdk::{ClientCredential, CredentialSource};
    /// let c = ClientCredential::new(CredentialSource::EphemeralToken, "auth_tokens/x")
    ///     .vouched_for(serde_json::json!({"sub": "alice"}));
    /// assert_eq!(c.vouched_claims().unwrap()["sub"], "alice");
    /// ```
    pub fn vouched_for(mut self, claims: serde_json::Value) -> Self {
        self.vouched = Some(claims);
        self
    }

    /// The claims of the caller that created this credential, when the gateway vouches for it.
    ///
    /// ```
    /// use gemini_proxy_sdk::{ClientCredential, CredentialSource};
    /// assert!(ClientCredential::new(CredentialSource::Bearer, "t").vouched_claims().is_none());
    /// ```
    pub fn vouched_claims(&self) -> Option<&serde_json::Value> {
        self.vouched.as_ref()
    }

    /// Where it was found.
    ///
    /// ```
    /// use gemini_proxy_sdk::{ClientCredential, CredentialSource};
    /// assert_eq!(ClientCredential::new(CredentialSource::QueryKey, "t").source(), CredentialSource::QueryKey);
    /// ```
    pub fn source(&self) -> CredentialSource {
        self.source
    }

    /// The secret value. Never log it.
    ///
    /// ```
    /// use gemini_proxy_sdk::{ClientCredential, CredentialSource};
    /// assert_eq!(ClientCredential::new(CredentialSource::Bearer, "t").value(), "t");
    /// ```
    pub fn value(&self) -> &str {
        &self.value
    }
}

impl std::fmt::Debug for ClientCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientCredential({}, <redacted>)", self.source.as_str())
    }
}

/// The caller's role.
///
/// ```
/// use gemini_proxy_sdk::Role;
/// assert_eq!(Role::Admin.as_str(), "admin");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Role {
    /// May call the proxy API within its limits.
    #[default]
    User,
    /// May also call the admin API.
    Admin,
}

impl Role {
    /// The role's name as it appears in tokens and audit rows.
    ///
    /// ```
    /// assert_eq!(gemini_proxy_sdk::Role::User.as_str(), "user");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }
}

/// Who is calling, as established by an auth plugin.
///
/// ```
/// use gemini_proxy_sdk::{Identity, Role};
/// let id = Identity::new("alice", Role::User);
/// assert_eq!(id.subject, "alice");
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Identity {
    /// The subject (`sub` claim): a user or service name.
    pub subject: String,
    /// The role.
    pub role: Role,
    /// All claims, for plugins that need more (allowed models, limits ...).
    pub claims: serde_json::Value,
}

impl Identity {
    /// An identity without extra claims.
    ///
    /// ```
    /// let id = gemini_proxy_sdk::Identity::new("svc", gemini_proxy_sdk::Role::Admin);
    /// assert!(id.claims.is_null());
    /// ```
    pub fn new(subject: impl Into<String>, role: Role) -> Self {
        Identity {
            subject: subject.into(),
            role,
            claims: serde_json::Value::Null,
        }
    }
}

/// The request as a plugin sees it. Client credentials have already been removed from
/// `headers` and `query`; see [`RequestContext::credential`].
///
/// ```
/// let cx = gemini_proxy_sdk::testing::request("POST", "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse");
/// assert_eq!(cx.request.model.as_deref(), Some("gemini-2.5-flash"));
/// assert!(cx.request.stream);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RequestView {
    /// Gateway-assigned id, also sent back as `x-request-id`.
    pub request_id: String,
    /// HTTP method.
    pub method: http::Method,
    /// Path, percent-decoding untouched (`/v1beta/models/x:generateContent`).
    pub path: String,
    /// Query string without the `key=` parameter, if any remains.
    pub query: Option<String>,
    /// Request headers without client credentials.
    pub headers: http::HeaderMap,
    /// API version segment (`v1beta`, `v1`, `v1alpha`).
    pub api_version: String,
    /// API family.
    pub api_kind: ApiKind,
    /// What the call does.
    pub action: Action,
    /// The model id without the `models/` prefix, when the call names one.
    pub model: Option<String>,
    /// True for streaming calls (SSE or JSON-array streams, OpenAI `stream: true` is not
    /// visible before the body is read and is reported in [`CompletedRequest`]).
    ///
    /// [`CompletedRequest`]: crate::CompletedRequest
    pub stream: bool,
    /// The client's address (after trusted-proxy resolution).
    pub client_ip: Option<IpAddr>,
    /// Declared body size (`Content-Length`), if any.
    pub body_size: Option<u64>,
    /// When the gateway received the request.
    pub received_at: SystemTime,
}

impl RequestView {
    /// A view of `method path`, classified as the gateway does (unknown paths get
    /// `ApiKind::Native` and `Action::Other`). Other fields start empty; set them as needed.
    ///
    /// ```
    /// let v = gemini_proxy_sdk::RequestView::new("r1", http::Method::POST, "/v1/models/m:embedContent");
    /// assert_eq!(v.action, gemini_proxy_sdk::Action::EmbedContent);
    /// assert_eq!(v.api_version, "v1");
    /// ```
    pub fn new(
        request_id: impl Into<String>,
        method: http::Method,
        path: impl Into<String>,
    ) -> Self {
        let path = path.into();
        match crate::classify(method.as_str(), &path) {
            Some(route) => RequestView::from_route(request_id, method, path, &route),
            None => {
                let route = crate::CallRoute {
                    api_kind: ApiKind::Native,
                    api_version: String::new(),
                    action: Action::Other,
                    model: None,
                    stream: false,
                };
                RequestView::from_route(request_id, method, path, &route)
            }
        }
    }

    /// A view of `method path` whose route the caller has already classified (the gateway
    /// reads each path once).
    pub fn from_route(
        request_id: impl Into<String>,
        method: http::Method,
        path: impl Into<String>,
        route: &crate::CallRoute,
    ) -> Self {
        RequestView {
            request_id: request_id.into(),
            method,
            query: None,
            headers: http::HeaderMap::new(),
            api_version: route.api_version.clone(),
            api_kind: route.api_kind,
            action: route.action,
            model: route.model.clone(),
            stream: route.stream,
            client_ip: None,
            body_size: None,
            received_at: SystemTime::now(),
            path: path.into(),
        }
    }
}

/// Everything one call carries through the pipeline. Plugins read the request and may set the
/// identity, tags, a risk score and typed extensions.
///
/// ```
/// let mut cx = gemini_proxy_sdk::testing::request("GET", "/v1beta/models");
/// cx.tags.insert("tier".into(), "free".into());
/// assert_eq!(cx.attempt, 0);
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct RequestContext {
    /// The request.
    pub request: RequestView,
    /// The gateway credential the client presented, if any.
    pub credential: Option<ClientCredential>,
    /// The caller, once an auth plugin established it.
    pub identity: Option<Identity>,
    /// Free-form tags, copied into the audit record.
    pub tags: BTreeMap<String, String>,
    /// Risk score (0-100) set by a scoring plugin.
    pub risk_score: Option<u8>,
    /// Upstream attempt number, 0 before the first attempt.
    pub attempt: u32,
    /// Key ids already tried for this call.
    pub tried_keys: Vec<String>,
    /// Typed plugin-to-plugin data.
    pub extensions: Extensions,
    /// Model and project changes asked for during admission (see [`crate::hooks`]).
    pub routing: crate::hooks::Routing,
}

impl RequestContext {
    /// A fresh context for a request.
    ///
    /// ```
    /// let cx = gemini_proxy_sdk::testing::request("GET", "/v1/models");
    /// let again = gemini_proxy_sdk::RequestContext::new(cx.request.clone(), None);
    /// assert!(again.identity.is_none());
    /// ```
    pub fn new(request: RequestView, credential: Option<ClientCredential>) -> Self {
        RequestContext {
            request,
            credential,
            identity: None,
            tags: BTreeMap::new(),
            risk_score: None,
            attempt: 0,
            tried_keys: Vec::new(),
            extensions: Extensions::default(),
            routing: crate::hooks::Routing::default(),
        }
    }
}

/// The address a per-client limit counts by: an IPv6 client is its /64 (one subscriber's
/// range: fresh addresses from it are one caller), an IPv4 client in IPv6 form (`::ffff:a.b.c.d`
/// on a dual-stack listener) is its IPv4 address.
///
/// ```
/// use gemini_proxy_sdk::caller_scope;
/// let a: std::net::IpAddr = "2001:db8::1".parse().unwrap();
/// let b: std::net::IpAddr = "2001:db8::ffff:2".parse().unwrap();
/// assert_eq!(caller_scope(a), caller_scope(b));
/// let v4: std::net::IpAddr = "::ffff:10.0.0.1".parse().unwrap();
/// assert_eq!(caller_scope(v4), "10.0.0.1".parse::<std::net::IpAddr>().unwrap());
/// assert_ne!(caller_scope("::ffff:10.0.0.2".parse().unwrap()), caller_scope(v4));
/// ```
pub fn caller_scope(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
        v4 => v4,
    }
}
