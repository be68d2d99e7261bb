//! Classification of a request path into the Gemini API family, action and model.

use crate::{Action, ApiKind};

/// What a path names, as far as routing and plugins care.
///
/// ```
/// use gemini_proxy_sdk::{classify, Action, ApiKind};
/// let r = classify("POST", "/v1/models/gemini-2.5-flash:countTokens").unwrap();
/// assert_eq!((r.api_kind, r.action, r.model.as_deref()), (ApiKind::Native, Action::CountTokens, Some("gemini-2.5-flash")));
/// assert!(classify("GET", "/favicon.ico").is_none());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CallRoute {
    /// API family.
    pub api_kind: ApiKind,
    /// Version segment (`v1beta`, `v1`, `v1alpha`, ...).
    pub api_version: String,
    /// What the call does.
    pub action: Action,
    /// Model id without `models/`, when the path names one.
    pub model: Option<String>,
    /// True for `:streamGenerateContent`.
    pub stream: bool,
}

fn is_version(seg: &str) -> bool {
    let b = seg.as_bytes();
    b.len() >= 2
        && b[0] == b'v'
        && b[1].is_ascii_digit()
        && b.iter().all(|c| c.is_ascii_alphanumeric())
}

/// Classifies an origin-form path (no query). `None` means the gateway does not serve it (404).
///
/// Any version prefix is accepted alike; `%3A` is accepted for the verb colon.
///
/// ```
/// use gemini_proxy_sdk::{classify, Action, ApiKind};
/// assert_eq!(classify("POST", "/v1beta/openai/chat/completions").unwrap().action, Action::ChatCompletions);
/// assert_eq!(classify("POST", "/upload/v1beta/files").unwrap().api_kind, ApiKind::Upload);
/// assert_eq!(classify("GET", "/v1beta/models").unwrap().action, Action::ListModels);
/// ```
pub fn classify(method: &str, path: &str) -> Option<CallRoute> {
    if let Some(live) = path.strip_prefix("/ws/") {
        return live_route(live);
    }
    let rest = path.strip_prefix('/')?;
    let (upload, rest) = match rest.strip_prefix("upload/") {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let (version, tail) = match rest.split_once('/') {
        Some((v, t)) => (v, t),
        None => (rest, ""),
    };
    if !is_version(version) {
        return None;
    }
    let mut route = CallRoute {
        api_kind: ApiKind::Native,
        api_version: version.to_string(),
        action: Action::Other,
        model: None,
        stream: false,
    };
    if upload {
        // Google takes media only for files and file search stores; any other name under
        // `/upload/` (a model, a tuned model) is refused, so it cannot dodge model checks.
        if !is_upload_target(tail) {
            return None;
        }
        route.api_kind = ApiKind::Upload;
        route.action = Action::Upload;
        return Some(route);
    }
    if tail.is_empty() {
        return None;
    }
    // Ephemeral tokens are made at one path, checked there; no other spelling (a trailing `/`,
    // a verb, another case, a `-`, under `openai/`) goes upstream unchecked.
    let creates_token = tail == "auth_tokens" && method.eq_ignore_ascii_case("POST");
    if !creates_token
        && tail
            .to_ascii_lowercase()
            .replace('-', "_")
            .contains("auth_token")
    {
        return None;
    }
    if let Some(oa) =
        tail.strip_prefix("openai/")
            .or(if tail == "openai" { Some("") } else { None })
    {
        route.api_kind = ApiKind::OpenAi;
        let (action, model) = openai_action(oa.trim_end_matches('/'))?;
        route.action = action;
        route.model = model;
        return Some(route);
    }
    let first = tail.split(['/', ':']).next().unwrap_or("");
    match first {
        "models" => {
            let after = tail["models".len()..].trim_start_matches('/');
            if after.is_empty() {
                route.action = if method.eq_ignore_ascii_case("GET") {
                    Action::ListModels
                } else {
                    Action::Other
                };
                return Some(route);
            }
            let (model, verb) = split_verb(after);
            // `models/{m}/operations/{id}` polls a long-running operation.
            let (model, sub) = match model.split_once('/') {
                Some((m, s)) => (m, Some(s)),
                None => (model, None),
            };
            route.model = Some(model.to_string());
            route.action = match (verb.as_deref(), sub) {
                // No Gemini path puts a verb after a model's sub-path: refused, so that
                // `models/x/y:generateContent` cannot pass as an operation poll.
                (Some(_), Some(_)) => return None,
                (None, Some(_)) => Action::Batches,
                (None, None) => Action::GetModel,
                (Some("generateContent"), None) => Action::GenerateContent,
                (Some("streamGenerateContent"), None) => Action::StreamGenerateContent,
                (Some("countTokens"), None) => Action::CountTokens,
                (Some("embedContent"), None) => Action::EmbedContent,
                (Some("batchEmbedContents"), None) => Action::BatchEmbedContents,
                (Some(_), None) => Action::ModelVerb,
            };
            route.stream = route.action == Action::StreamGenerateContent;
        }
        "files" => route.action = Action::Files,
        "cachedContents" => route.action = Action::CachedContents,
        "batches" | "operations" => route.action = Action::Batches,
        "auth_tokens" if creates_token => route.action = Action::CreateAuthToken,
        "" => return None,
        _ => route.action = Action::Other,
    }
    Some(route)
}

/// `google.ai.generativelanguage.{version}.GenerativeService.BidiGenerateContent[Constrained]`:
/// a Live API session; no other `/ws/` path is served.
///
/// ```
/// use gemini_proxy_sdk::{classify, Action, ApiKind};
/// let r = classify("GET", "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent").unwrap();
/// assert_eq!((r.api_kind, r.action, r.api_version.as_str()), (ApiKind::Live, Action::BidiGenerateContent, "v1beta"));
/// assert!(classify("GET", "/ws/google.ai.generativelanguage.v1beta.GenerativeService.Other").is_none());
/// ```
fn live_route(rest: &str) -> Option<CallRoute> {
    let rest = rest.strip_prefix("google.ai.generativelanguage.")?;
    let (version, method) = rest.split_once(".GenerativeService.")?;
    if !is_version(version)
        || !matches!(
            method,
            "BidiGenerateContent" | "BidiGenerateContentConstrained"
        )
    {
        return None;
    }
    Some(CallRoute {
        api_kind: ApiKind::Live,
        api_version: version.to_string(),
        action: Action::BidiGenerateContent,
        model: None,
        stream: true,
    })
}

/// The action of an OpenAI-style path (after `openai/`), and the model it names, if any.
fn openai_action(oa: &str) -> Option<(Action, Option<String>)> {
    Some(match oa {
        "chat/completions" => (Action::ChatCompletions, None),
        "embeddings" => (Action::Embeddings, None),
        "models" => (Action::OpenAiModels, None),
        "" => return None,
        _ => match oa.strip_prefix("models/") {
            // One model's entry: its name is checked as a call of that model would be.
            Some(model) => {
                let model = model.strip_prefix("models/").unwrap_or(model);
                if model.is_empty() || model.contains('/') {
                    return None;
                }
                (Action::OpenAiModels, Some(model.to_string()))
            }
            None => (Action::Other, None),
        },
    })
}

/// `files` (a new upload or a resumable session) or `fileSearchStores/{id}:uploadToFileSearchStore`.
fn is_upload_target(tail: &str) -> bool {
    let tail = tail.trim_end_matches('/');
    if tail == "files" {
        return true;
    }
    let Some(store) = tail.strip_prefix("fileSearchStores/") else {
        return false;
    };
    let (name, verb) = split_verb(store);
    !name.is_empty() && !name.contains('/') && verb.as_deref() == Some("uploadToFileSearchStore")
}

/// Splits `name:verb` (or `name%3Averb`) into the name and the verb.
fn split_verb(s: &str) -> (&str, Option<String>) {
    if let Some((name, verb)) = s.split_once(':') {
        return (name, Some(verb.to_string()));
    }
    let lower = s.to_ascii_lowercase();
    if let Some(i) = lower.find("%3a") {
        return (&s[..i], Some(s[i + 3..].to_string()));
    }
    (s, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ephemeral_tokens_are_created_by_a_post_only() {
        let r = classify("POST", "/v1alpha/auth_tokens").unwrap();
        assert_eq!(r.action, Action::CreateAuthToken);
        // Every other spelling is no route: none goes upstream past the token checks.
        for (m, p) in [
            ("GET", "/v1alpha/auth_tokens"),
            ("POST", "/v1alpha/auth_tokens/x"),
            ("POST", "/v1alpha/auth_tokens/"),
            ("POST", "/v1alpha/auth_tokens:create"),
            ("POST", "/v1alpha/Auth_tokens"),
            ("POST", "/v1alpha/auth-tokens"),
            ("POST", "/v1alpha/auth_tokens;x"),
            ("POST", "/v1beta/openai/auth_tokens"),
            ("POST", "/v1beta/models/auth_tokens:generateContent"),
        ] {
            assert!(classify(m, p).is_none(), "{m} {p}");
        }
    }

    #[test]
    fn native_verbs_under_any_version() {
        for v in ["v1beta", "v1", "v1alpha", "v2"] {
            let r = classify(
                "POST",
                &format!("/{v}/models/gemini-2.5-flash:streamGenerateContent"),
            )
            .unwrap();
            assert_eq!(r.action, Action::StreamGenerateContent);
            assert!(r.stream);
            assert_eq!(r.api_version, v);
        }
        let r = classify("POST", "/v1beta/models/gemini-2.5-flash%3AgenerateContent").unwrap();
        assert_eq!(r.action, Action::GenerateContent);
        assert_eq!(r.model.as_deref(), Some("gemini-2.5-flash"));
        assert_eq!(
            classify("POST", "/v1beta/models/m:batchEmbedContents")
                .unwrap()
                .action,
            Action::BatchEmbedContents
        );
        assert_eq!(
            classify("POST", "/v1beta/models/m:embedContent")
                .unwrap()
                .action,
            Action::EmbedContent
        );
        assert_eq!(
            classify("POST", "/v1beta/models/m:predict").unwrap().action,
            Action::ModelVerb
        );
        assert_eq!(
            classify("GET", "/v1beta/models/m").unwrap().action,
            Action::GetModel
        );
        assert_eq!(
            classify("GET", "/v1beta/models/m/operations/x")
                .unwrap()
                .action,
            Action::Batches
        );
        for sneaky in [
            "/v1beta/models/models/gemini-2.5-pro:generateContent",
            "/v1beta/models/gemini-2.5-pro/operations/x:generateContent",
            "/v1beta/models/a/b%3AstreamGenerateContent",
        ] {
            assert_eq!(classify("POST", sneaky), None, "{sneaky}");
        }
    }

    #[test]
    fn resources_and_openai() {
        assert_eq!(
            classify("GET", "/v1beta/files/abc").unwrap().action,
            Action::Files
        );
        assert_eq!(
            classify("POST", "/v1beta/files:register").unwrap().action,
            Action::Files
        );
        assert_eq!(
            classify("PATCH", "/v1beta/cachedContents/x")
                .unwrap()
                .action,
            Action::CachedContents
        );
        assert_eq!(
            classify("GET", "/v1beta/batches/1").unwrap().action,
            Action::Batches
        );
        assert_eq!(
            classify("GET", "/v1beta/openai/models").unwrap().action,
            Action::OpenAiModels
        );
        let one = classify("GET", "/v1beta/openai/models/gemini").unwrap();
        assert_eq!(one.action, Action::OpenAiModels);
        assert_eq!(one.model.as_deref(), Some("gemini"));
        let prefixed = classify("GET", "/v1beta/openai/models/models/gemini-2.5-pro").unwrap();
        assert_eq!(prefixed.model.as_deref(), Some("gemini-2.5-pro"));
        assert!(classify("GET", "/v1beta/openai/models/a/b").is_none());
        assert_eq!(
            classify("GET", "/v1beta/openai/models").unwrap().model,
            None
        );
        assert_eq!(
            classify("POST", "/v1beta/openai/embeddings")
                .unwrap()
                .action,
            Action::Embeddings
        );
        assert_eq!(
            classify("POST", "/v1beta/openai/chat/completions")
                .unwrap()
                .api_kind,
            ApiKind::OpenAi
        );
        for upload in [
            "/upload/v1beta/files",
            "/upload/v1beta/files/",
            "/upload/v1/files",
            "/upload/v1beta/fileSearchStores/s1:uploadToFileSearchStore",
            "/upload/v1beta/fileSearchStores/s1%3AuploadToFileSearchStore",
        ] {
            assert_eq!(
                classify("POST", upload).unwrap().action,
                Action::Upload,
                "{upload}"
            );
        }
    }

    #[test]
    fn unknown_paths() {
        for p in [
            "/",
            "/health",
            "/v1beta",
            "/v1beta/",
            "/upload/v1beta",
            "/upload/v1beta/models/gemini-2.5-pro:generateContent",
            "/upload/v1beta/tunedModels/t:generateContent",
            "/upload/v1beta/files/abc",
            "/upload/v1beta/cachedContents",
            "/upload/v1beta/fileSearchStores/s",
            "/upload/v1beta/fileSearchStores/a/b:uploadToFileSearchStore",
            "/vx/models",
            "/api/keys",
            "relative",
            "/v1beta/openai/",
        ] {
            assert!(classify("GET", p).is_none(), "{p} should not route");
        }
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary (for
/// capping values that go into logs, tags and audit records).
///
/// ```
/// use gemini_proxy_sdk::prefix_within;
/// assert_eq!(prefix_within("tenant-a", 6), "tenant");
/// assert_eq!(prefix_within("héllo", 2), "h"); // never splits the two-byte `é`
/// assert_eq!(prefix_within("short", 100), "short");
/// ```
pub fn prefix_within(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Matches `text` against a pattern where `*` stands for any run of characters (model lists:
/// `gemini-2.5-*`, `*flash*`).
///
/// ```
/// use gemini_proxy_sdk::glob_match;
/// assert!(glob_match("gemini-2.5-*", "gemini-2.5-flash"));
/// assert!(!glob_match("gemini-2.5-*", "gemini-2.0-flash"));
/// ```
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let mut rest = text;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
    }
    true
}

#[cfg(test)]
mod glob_tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("gemini-2.5-*", "gemini-2.5-flash"));
        assert!(glob_match("*flash*", "gemini-2.5-flash-lite"));
        assert!(!glob_match("gemini-2.5-*", "gemini-2.0-flash"));
        assert!(glob_match("exact", "exact") && !glob_match("exact", "exactly"));
    }
}
