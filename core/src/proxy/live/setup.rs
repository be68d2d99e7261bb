//! The client's first message: a `setup` naming the model, read within `live.setup_timeout`
//! and `live.max_setup_bytes`. Nothing goes upstream before it is read and admitted.

use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::{ClientWs, Close};
use crate::proxy::model::valid_model;

pub struct Setup {
    /// The whole first message, as sent upstream (a routed model written into it).
    message: Value,
    /// The model without `models/`.
    pub model: String,
    /// The affinity pin of the session it resumes (`sessionResumption.handle`).
    resumes: Option<String>,
}

impl Setup {
    pub fn set_model(&mut self, model: &str) {
        self.message["setup"]["model"] = Value::String(format!("models/{model}"));
        self.model = model.to_string();
    }

    pub fn text(&self) -> String {
        self.message.to_string()
    }

    /// The session this one resumes (`sessionResumption.handle`), as the affinity pins it.
    pub fn resumes(&self) -> Option<String> {
        self.resumes.clone()
    }
}

/// Reads the setup; a close for the client when it is missing, late, too large or malformed.
pub async fn read(ws: &mut ClientWs, limits: &crate::config::LiveConfig) -> Result<Setup, Close> {
    let wait = limits.setup_timeout.0;
    let first = tokio::time::timeout(wait, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => return other,
            }
        }
    })
    .await
    .map_err(|_| Close::new(1008, format!("no setup message within {wait:?}")))?;
    let bytes = match first {
        Some(Ok(Message::Text(t))) => t.as_bytes().to_vec(),
        Some(Ok(Message::Binary(b))) => b.to_vec(),
        Some(Err(WsError::Capacity(_))) => return Err(too_large(limits)),
        Some(Err(WsError::Io(e))) if super::capped::is_over_cap(&e) => {
            return Err(too_large(limits));
        }
        // Closed or gone before a setup: nothing to answer.
        _ => return Err(Close::new(1000, "")),
    };
    if bytes.len() > limits.max_setup_bytes {
        return Err(too_large(limits));
    }
    let setup = parse(&bytes)?;
    ws.get_mut().lift();
    Ok(setup)
}

/// The longest resumption handle a setup may carry.
const MAX_HANDLE: usize = 4096;

/// The affinity name of a resumption handle: the key of the session that issued it serves the
/// sessions that resume it. Handles are opaque; odd ones are not remembered.
pub fn resumption_pin(handle: &str) -> Option<String> {
    (!handle.is_empty()
        && handle.len() <= MAX_HANDLE
        && handle.bytes().all(|b| b.is_ascii_graphic()))
    .then(|| format!("live-resumption:{handle}"))
}

fn too_large(limits: &crate::config::LiveConfig) -> Close {
    Close::new(
        1009,
        format!("the setup message is over {} bytes", limits.max_setup_bytes),
    )
}

fn parse(bytes: &[u8]) -> Result<Setup, Close> {
    let bad = |m: &str| Close::new(1007, m.to_string());
    let message: Value =
        serde_json::from_slice(bytes).map_err(|_| bad("the first message must be a JSON setup"))?;
    let model = message
        .get("setup")
        .filter(|s| s.is_object())
        .ok_or_else(|| bad("the first message must be a setup"))?
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("setup.model is missing"))?;
    let model = model.strip_prefix("models/").unwrap_or(model);
    if !valid_model(model) {
        return Err(bad("setup.model is not a valid model name"));
    }
    let model = model.to_string();
    let resumes = resumed_pin(&message["setup"]).map_err(bad)?;
    Ok(Setup {
        message,
        model,
        resumes,
    })
}

/// The pin of the handle a setup resumes. The gateway checks whose session that is, so the
/// upstream must see no handle but the one checked: a setup with both spellings of the field,
/// or a handle the gateway could not pin, is refused.
fn resumed_pin(setup: &Value) -> Result<Option<String>, &'static str> {
    let field = match (
        setup.get("sessionResumption"),
        setup.get("session_resumption"),
    ) {
        (Some(_), Some(_)) => {
            return Err("setup has both sessionResumption and session_resumption");
        }
        (Some(r), None) | (None, Some(r)) => r,
        (None, None) => return Ok(None),
    };
    match &field["handle"] {
        Value::Null => Ok(None),
        Value::String(h) if h.is_empty() => Ok(None),
        Value::String(h) => resumption_pin(h)
            .map(Some)
            .ok_or("sessionResumption.handle is not a valid handle"),
        _ => Err("sessionResumption.handle must be a string"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_setup_names_a_valid_model_or_is_refused_with_1007() {
        let s =
            parse(br#"{"setup":{"model":"models/gemini-live-2.5-flash","generationConfig":{}}}"#)
                .unwrap();
        assert_eq!(s.model, "gemini-live-2.5-flash");
        for bad in [
            &b"not json"[..],
            br#"{"clientContent":{}}"#,
            br#"{"setup":"x"}"#,
            br#"{"setup":{}}"#,
            br#"{"setup":{"model":"models/../../files"}}"#,
            br#"{"setup":{"model":""}}"#,
            br#"[1,2]"#,
        ] {
            let c = parse(bad).err().expect("refused");
            assert_eq!(c.code, 1007, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_setup_resumes_one_handle_the_gateway_can_check_or_is_refused() {
        let pin = |t: &str| parse(t.as_bytes()).map(|s| s.resumes());
        let m = r#""model":"models/m""#;
        assert_eq!(
            pin(&format!(
                r#"{{"setup":{{{m},"sessionResumption":{{"handle":"h-1"}}}}}}"#
            )),
            Ok(Some("live-resumption:h-1".into()))
        );
        assert_eq!(
            pin(&format!(
                r#"{{"setup":{{{m},"session_resumption":{{"handle":"h-2"}}}}}}"#
            )),
            Ok(Some("live-resumption:h-2".into()))
        );
        assert_eq!(
            pin(&format!(r#"{{"setup":{{{m},"sessionResumption":{{}}}}}}"#)),
            Ok(None)
        );
        let long = "h".repeat(MAX_HANDLE + 1);
        for resumption in [
            r#""sessionResumption":{"handle":null},"session_resumption":{"handle":"victim"}"#,
            r#""sessionResumption":{},"session_resumption":{"handle":"victim"}"#,
            r#""sessionResumption":{"handle":"a b"}"#,
            r#""sessionResumption":{"handle":7}"#,
            &format!(r#""sessionResumption":{{"handle":"{long}"}}"#),
        ] {
            let refused = pin(&format!(r#"{{"setup":{{{m},{resumption}}}}}"#));
            assert_eq!(refused.err().map(|c| c.code), Some(1007), "{resumption}");
        }
    }

    #[test]
    fn a_routed_model_goes_into_the_setup() {
        let mut s = parse(br#"{"setup":{"model":"models/a","tools":[]}}"#).unwrap();
        s.set_model("b");
        let v: Value = serde_json::from_str(&s.text()).unwrap();
        assert_eq!(v["setup"]["model"], "models/b");
        assert_eq!(v["setup"]["tools"], serde_json::json!([]));
    }
}
