//! The model a call names: its checks, where a body names it (OpenAI-style calls, cached
//! contents, ephemeral tokens), and its rewriting in a path.

/// Longest model name accepted.
pub const MAX_MODEL: usize = 128;

/// A model name the gateway stores, counts and matches: 1-128 letters, digits, `.`, `_`, `-`.
pub fn valid_model(m: &str) -> bool {
    !m.is_empty()
        && m.len() <= MAX_MODEL
        && m.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// What the gateway reads of an OpenAI-style body: the model (without `models/`) and
/// `stream`. Other fields are skipped unread.
#[derive(Debug, PartialEq)]
pub struct OpenAiHead {
    pub model: String,
    pub stream: bool,
}

impl OpenAiHead {
    /// `None` unless the body is a JSON object with a valid `model`.
    pub fn parse(body: &[u8]) -> Option<OpenAiHead> {
        #[derive(serde::Deserialize)]
        struct Head {
            model: Option<String>,
            #[serde(default)]
            stream: Option<bool>,
        }
        let h: Head = serde_json::from_slice(body).ok()?;
        let model = h.model?;
        let model = model.strip_prefix("models/").unwrap_or(&model);
        valid_model(model).then(|| OpenAiHead {
            model: model.to_string(),
            stream: h.stream.unwrap_or(false),
        })
    }
}

/// The model a body names in its `model` field (`models/` dropped): `Ok(None)` when it names
/// none, `Err` when the body is not a JSON object or the name is invalid. Read where the model
/// is in the body of a call whose path names none (a cached content is made for one model).
pub fn body_model(body: &[u8]) -> Result<Option<String>, ()> {
    #[derive(serde::Deserialize)]
    struct Head {
        model: Option<String>,
    }
    let h: Head = serde_json::from_slice(body).map_err(|_| ())?;
    checked_model(h.model)
}

/// A model named in a body, `models/` dropped; `Err` when it is not a valid name.
fn checked_model(model: Option<String>) -> Result<Option<String>, ()> {
    match model {
        None => Ok(None),
        Some(m) => {
            let m = m.strip_prefix("models/").unwrap_or(&m);
            if valid_model(m) {
                Ok(Some(m.to_string()))
            } else {
                Err(())
            }
        }
    }
}

/// The model an ephemeral token's body locks its sessions to (`bidiGenerateContentSetup.model`,
/// in either of the spellings Google reads), as [`body_model`] reads a model.
pub fn token_model(body: &[u8]) -> Result<Option<String>, ()> {
    #[derive(serde::Deserialize)]
    struct Setup {
        model: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Token {
        #[serde(
            rename = "bidiGenerateContentSetup",
            alias = "bidi_generate_content_setup"
        )]
        setup: Option<Setup>,
    }
    let t: Token = serde_json::from_slice(body).map_err(|_| ())?;
    checked_model(t.setup.and_then(|s| s.model))
}

/// An ephemeral token's request as the gateway checked it, written out again: what Google
/// reads is exactly what the checks read (no duplicate or escaped field name can say one thing
/// to them and another to Google). A field given in both of Google's spellings is refused.
pub fn canonical_token_request(body: &[u8]) -> Result<bytes::Bytes, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("the token request is not JSON: {e}"))?;
    let both = |o: &serde_json::Value, pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .find(|(c, s)| o.get(c).is_some() && o.get(s).is_some())
            .map(|(c, s)| format!("the token request names both {c} and {s}"))
    };
    let top = [
        ("expireTime", "expire_time"),
        ("newSessionExpireTime", "new_session_expire_time"),
        ("bidiGenerateContentSetup", "bidi_generate_content_setup"),
        ("fieldMask", "field_mask"),
    ];
    if !v.is_object() {
        return Err("the token request is not a JSON object".into());
    }
    if let Some(e) = both(&v, &top) {
        return Err(e);
    }
    serde_json::to_vec(&v)
        .map(bytes::Bytes::from)
        .map_err(|e| e.to_string())
}

/// The path with the model segment `models/{old}` replaced by `models/{new}`; `None` when the
/// path has no such segment (the segment ends at `:`, `%3A`, `/` or the end).
pub fn rewrite_model(path: &str, old: &str, new: &str) -> Option<String> {
    let at = path.find("/models/")? + "/models/".len();
    let rest = &path[at..];
    let tail = rest.strip_prefix(old)?;
    let boundary = tail.is_empty()
        || tail.starts_with(':')
        || tail.starts_with('/')
        || tail.get(..3).is_some_and(|t| t.eq_ignore_ascii_case("%3a"));
    if old.is_empty() || !boundary {
        return None;
    }
    Some(format!("{}{new}{tail}", &path[..at]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_are_letters_digits_and_dot_dash_underscore() {
        assert!(valid_model("gemini-2.5-flash-preview-09-2025"));
        for bad in ["", "a b", "m;x", "m/x", "é", &"x".repeat(129)] {
            assert!(!valid_model(bad), "{bad}");
        }
    }

    #[test]
    fn body_models() {
        assert_eq!(
            body_model(br#"{"model": "models/gemini-2.5-pro", "contents": []}"#),
            Ok(Some("gemini-2.5-pro".into()))
        );
        assert_eq!(
            body_model(br#"{"model": "models/gemini\u002d2.5-pro"}"#),
            Ok(Some("gemini-2.5-pro".into())),
            "escapes read as Google reads them"
        );
        assert_eq!(body_model(br#"{"ttl": "60s"}"#), Ok(None));
        for bad in [
            &br#"{"model": "a", "model": "b"}"#[..],
            br#"{"model": "models/x y"}"#,
            br#"{"model": 5}"#,
            b"[1]",
            b"not json",
        ] {
            assert_eq!(body_model(bad), Err(()), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn openai_heads() {
        assert_eq!(
            OpenAiHead::parse(
                br#"{"messages": [], "model": "models/gemini-2.5-pro", "stream": true}"#
            ),
            Some(OpenAiHead {
                model: "gemini-2.5-pro".into(),
                stream: true
            })
        );
        assert!(!OpenAiHead::parse(br#"{"model": "m"}"#).unwrap().stream);
        for bad in [
            &b"{}"[..],
            b"not json",
            br#"{"model": 3}"#,
            br#"{"model": "a b"}"#,
            br#"[1]"#,
        ] {
            assert!(OpenAiHead::parse(bad).is_none());
        }
    }
    #[test]
    fn a_token_body_names_the_model_it_locks() {
        let m = |b: &str| token_model(b.as_bytes());
        assert_eq!(
            m(r#"{"uses":1,"bidiGenerateContentSetup":{"model":"models/gemini-live"}}"#),
            Ok(Some("gemini-live".into()))
        );
        assert_eq!(
            m(r#"{"bidi_generate_content_setup":{"model":"gemini-\u0070ro"}}"#),
            Ok(Some("gemini-pro".into()))
        );
        assert_eq!(m(r#"{"uses":1}"#), Ok(None));
        assert_eq!(
            m(r#"{"bidiGenerateContentSetup":{"generationConfig":{}}}"#),
            Ok(None)
        );
        // Both spellings at once, or a model twice, could be read two ways: refused.
        assert!(
            m(r#"{"bidiGenerateContentSetup":{},"bidi_generate_content_setup":{"model":"x"}}"#)
                .is_err()
        );
        assert!(m(r#"{"bidiGenerateContentSetup":{"model":"a","model":"b"}}"#).is_err());
        assert!(m("[1]").is_err());
    }

    #[test]
    fn model_segment_only() {
        assert_eq!(
            rewrite_model(
                "/v1beta/models/gemini-2.5-pro:generateContent",
                "gemini-2.5-pro",
                "gemini-2.5-flash"
            )
            .as_deref(),
            Some("/v1beta/models/gemini-2.5-flash:generateContent")
        );
        assert_eq!(
            rewrite_model("/v1/models/m%3AstreamGenerateContent", "m", "n").as_deref(),
            Some("/v1/models/n%3AstreamGenerateContent")
        );
        assert_eq!(
            rewrite_model("/v1beta/models/m", "m", "n").as_deref(),
            Some("/v1beta/models/n")
        );
        // A longer model with the same prefix is not this model.
        assert_eq!(
            rewrite_model("/v1beta/models/m-2:generateContent", "m", "n"),
            None
        );
        assert_eq!(
            rewrite_model("/v1beta/openai/chat/completions", "m", "n"),
            None
        );
    }
}
