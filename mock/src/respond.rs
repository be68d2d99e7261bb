//! Building answers: Google-style JSON, errors, paced bodies; reading a request.

use super::*;

pub(crate) fn full(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let body: Bytes = body.into();
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("server", "scaffolding on HTTPServer2")
        .header("x-content-type-options", "nosniff")
        .header("alt-svc", "h3=\":443\"; ma=2592000")
        .body(Full::new(body).map_err(|e: Infallible| match e {}).boxed())
        .expect("response")
}

pub(crate) fn json_resp(status: u16, v: &Value) -> Response<Body> {
    full(
        status,
        "application/json; charset=UTF-8",
        serde_json::to_vec(v).unwrap_or_default(),
    )
}

pub(crate) fn google_error(status: u16, v: Value, array: bool) -> Response<Body> {
    if array {
        let text = format!(
            "[{}\n]",
            serde_json::to_string_pretty(&v).unwrap_or_default()
        );
        full(status, "application/json; charset=UTF-8", text)
    } else {
        json_resp(status, &v)
    }
}

/// A body whose frames come from a channel, so events can be paced.
pub(crate) fn channel_body(
    status: u16,
    content_type: &str,
) -> (
    tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    Response<Body>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item.map(Frame::data), rx))
    });
    let resp = Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("server", "scaffolding on HTTPServer2")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("response");
    (tx, resp)
}

pub(crate) fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        (k == name).then_some(v)
    })
}

pub(crate) fn header<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}
