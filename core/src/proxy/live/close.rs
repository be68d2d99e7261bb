//! How a Live session ends when something refuses it: a close code and a reason the client's
//! SDK reports (`APIError(code, reason)`), and what an upstream close before `setupComplete`
//! means for the key that got it.

use gemini_proxy_sdk::UpstreamError;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, frame::coding::CloseCode};

use crate::proxy::failure::Failure;

/// The longest close reason a frame carries (125 bytes less the code).
const MAX_REASON: usize = 123;

#[derive(Debug, Clone, PartialEq)]
pub struct Close {
    pub code: u16,
    pub reason: String,
}

impl Close {
    pub fn new(code: u16, reason: impl Into<String>) -> Close {
        Close {
            code,
            reason: cut(reason.into()),
        }
    }

    /// A refusal the gateway would answer in HTTP, as a close: auth and policy 1008, limits
    /// and no key left 1013 (try again later), too large 1009, the gateway's own failure 1011.
    pub fn from_failure(f: &Failure) -> Close {
        let code = match f.status {
            413 => 1009,
            429 | 503 => 1013,
            400..=499 => 1008,
            _ => 1011,
        };
        Close::new(code, format!("{}: {}", status_name(f.status), f.message))
    }

    /// An upstream's HTTP refusal of the upgrade, as a close for the client.
    pub fn from_status(status: u16, message: &str) -> Close {
        let f = Failure::new(
            status,
            crate::proxy::failure::ErrorClass::UpstreamProtocol,
            message,
        );
        Close::from_failure(&f)
    }

    pub fn frame(&self) -> CloseFrame {
        CloseFrame {
            code: CloseCode::from(self.code),
            reason: self.reason.clone().into(),
        }
    }
}

fn status_name(status: u16) -> &'static str {
    match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        413 => "REQUEST_TOO_LARGE",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        _ => "INTERNAL",
    }
}

/// At most [`MAX_REASON`] bytes, cut at a character boundary.
fn cut(mut s: String) -> String {
    if s.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// What an upstream close before `setupComplete` says, as the HTTP answer it stands for (so
/// the key pool judges it as it judges HTTP): Google closes with 1008 for a key or policy
/// problem, 1011 for quota and internal errors, 1007 for a bad request, 1013 when overloaded.
/// Only the start of a reason is read, and only Google's own wording: the rest of a reason
/// can echo what the client sent (a model name), and a client must not be able to get a key
/// marked dead or cooled by naming a model `x-API_KEY_INVALID`.
pub fn as_http(code: u16, reason: &str) -> (u16, Option<UpstreamError>) {
    let (status, grpc, info) = judge(code, reason);
    let details: Vec<serde_json::Value> = info
        .map(|reason| {
            serde_json::json!({"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason})
        })
        .into_iter()
        .collect();
    let body = serde_json::json!({"error": {"code": status, "status": grpc, "message": reason, "details": details}});
    (status, UpstreamError::parse(body.to_string().as_bytes()))
}

const KEY_INVALID: [&str; 3] = ["API key not valid", "API Key not found", "API key expired"];
const SUSPENDED: [&str; 2] = ["Permission denied: Consumer '", "Consumer '"];
const QUOTA: [&str; 3] = [
    "You exceeded your current quota",
    "Resource has been exhausted",
    "Quota exceeded",
];

fn judge(code: u16, reason: &str) -> (u16, &'static str, Option<&'static str>) {
    let starts = |texts: &[&str]| texts.iter().any(|t| reason.starts_with(t));
    if starts(&KEY_INVALID) {
        (400, "INVALID_ARGUMENT", Some("API_KEY_INVALID"))
    } else if starts(&SUSPENDED) && suspended_consumer(reason) {
        (403, "PERMISSION_DENIED", Some("CONSUMER_SUSPENDED"))
    } else if starts(&QUOTA) {
        (429, "RESOURCE_EXHAUSTED", None)
    } else if reason.starts_with("models/") {
        (404, "NOT_FOUND", None)
    } else {
        match code {
            1007 => (400, "INVALID_ARGUMENT", None),
            1008 => (403, "PERMISSION_DENIED", None),
            1009 => (413, "INVALID_ARGUMENT", None),
            _ => (503, "UNAVAILABLE", None),
        }
    }
}

/// `Consumer 'api_key:…' has been suspended.`: the consumer is Google's, never the client's,
/// so the quoted part holds no spaces or quotes and the sentence follows it directly.
fn suspended_consumer(reason: &str) -> bool {
    let Some(start) = reason.find("Consumer '") else {
        return false;
    };
    let rest = &reason[start + "Consumer '".len()..];
    let Some(end) = rest.find('\'') else {
        return false;
    };
    let consumer = &rest[..end];
    !consumer.contains(char::is_whitespace) && rest[end..].starts_with("' has been suspended")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::{Verdict, classify};

    #[test]
    fn google_closes_are_judged_as_their_http_answers() {
        let verdict = |code, reason| {
            let (status, e) = as_http(code, reason);
            classify(status, e.as_ref(), false)
        };
        assert!(matches!(
            verdict(1008, "API key not valid. Please pass a valid API key."),
            Verdict::KeyDead(_)
        ));
        assert!(matches!(
            verdict(1008, "Consumer 'api_key:x' has been suspended."),
            Verdict::KeyDead(_)
        ));
        assert!(verdict(1011, "You exceeded your current quota, please check").rotates());
        assert_eq!(
            verdict(1011, "Internal error encountered."),
            Verdict::Transient
        );
        assert_eq!(verdict(1013, ""), Verdict::Transient);
        assert_eq!(
            verdict(1008, "models/x is not found, or is not supported"),
            Verdict::ClientError
        );
        assert_eq!(verdict(1007, "Invalid JSON payload"), Verdict::ClientError);
    }

    #[test]
    fn what_a_client_sent_cannot_condemn_a_key() {
        let verdict = |code, reason| {
            let (status, e) = as_http(code, reason);
            classify(status, e.as_ref(), false)
        };
        for reason in [
            "models/nosuch-API_KEY_INVALID is not found for API version v1beta",
            "models/api key not valid is not found",
            "models/x-has been suspended-quota is not found",
            "Invalid JSON payload received. Unknown name \"quota\"",
            "Invalid value: Consumer 'me' has been suspended",
            "Consumer 'a b' has been suspended.",
        ] {
            let v = verdict(1008, reason);
            assert!(
                matches!(v, Verdict::ClientError),
                "{reason:?} was judged {v:?}"
            );
            let v = verdict(1007, reason);
            assert!(matches!(v, Verdict::ClientError), "{reason:?}: {v:?}");
        }
        assert!(matches!(
            verdict(
                1008,
                "Permission denied: Consumer 'api_key:AIzaX' has been suspended."
            ),
            Verdict::KeyDead(_)
        ));
    }

    #[test]
    fn a_reason_fits_a_close_frame() {
        let c = Close::new(1008, "é".repeat(100));
        assert!(c.reason.len() <= MAX_REASON && c.reason.chars().all(|ch| ch == 'é'));
        assert_eq!(Close::new(1000, "short").reason, "short");
    }
}
