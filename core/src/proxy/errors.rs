//! Error bodies in the client's dialect: Google's on native paths, OpenAI's on `/openai/`.

use bytes::Bytes;

/// Which error dialect a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorStyle {
    Google,
    OpenAi,
}

impl ErrorStyle {
    pub fn for_path(path: &str) -> ErrorStyle {
        if path.contains("/openai/") || path.ends_with("/openai") {
            ErrorStyle::OpenAi
        } else {
            ErrorStyle::Google
        }
    }
}

pub fn grpc_status(status: u16) -> &'static str {
    gemini_proxy_sdk::Rejection::new(status, "").grpc_status()
}

fn openai_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        s if s >= 500 => "api_error",
        _ => "invalid_request_error",
    }
}

pub fn error_body(style: ErrorStyle, status: u16, message: &str) -> Bytes {
    let v = match style {
        ErrorStyle::Google => serde_json::json!({
            "error": {"code": status, "message": message, "status": grpc_status(status)}
        }),
        ErrorStyle::OpenAi => serde_json::json!({
            "error": {"message": message, "type": openai_type(status), "code": grpc_status(status).to_ascii_lowercase()}
        }),
    };
    Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_dialects() {
        let g: serde_json::Value =
            serde_json::from_slice(&error_body(ErrorStyle::Google, 404, "no")).unwrap();
        assert_eq!(g["error"]["code"], 404);
        assert_eq!(g["error"]["status"], "NOT_FOUND");
        let o: serde_json::Value =
            serde_json::from_slice(&error_body(ErrorStyle::OpenAi, 429, "slow")).unwrap();
        assert_eq!(o["error"]["type"], "rate_limit_error");
        assert_eq!(o["error"]["message"], "slow");
        assert_eq!(
            ErrorStyle::for_path("/v1beta/openai/chat/completions"),
            ErrorStyle::OpenAi
        );
        assert_eq!(ErrorStyle::for_path("/v1beta/models"), ErrorStyle::Google);
    }
}
