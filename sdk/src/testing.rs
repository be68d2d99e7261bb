//! Helpers to test a plugin without a network or a gateway.
//!
//! ```
//! use gemini_proxy_sdk::testing;
//! let cx = testing::request("POST", "/v1beta/openai/chat/completions");
//! assert_eq!(cx.request.api_kind, gemini_proxy_sdk::ApiKind::OpenAi);
//! let cands = testing::candidates(&[("a", 1), ("b", 3)]);
//! assert_eq!(cands[1].weight, 3);
//! ```

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use crate::{Candidate, RequestContext, RequestView};

/// A request context for `method` and `target` (path with an optional query), classified as the
/// gateway would. Unknown paths get `ApiKind::Native` / `Action::Other`.
///
/// ```
/// let cx = gemini_proxy_sdk::testing::request("GET", "/v1beta/models?pageSize=5");
/// assert_eq!(cx.request.query.as_deref(), Some("pageSize=5"));
/// ```
pub fn request(method: &str, target: &str) -> RequestContext {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (target, None),
    };
    let mut view = RequestView::new(
        "test-request",
        method.parse().unwrap_or(http::Method::GET),
        path,
    );
    view.query = query;
    view.client_ip = Some(std::net::IpAddr::from([127, 0, 0, 1]));
    RequestContext::new(view, None)
}

/// Candidates from `(id, weight)` pairs, each in a project of its own.
///
/// ```
/// assert_eq!(gemini_proxy_sdk::testing::candidates(&[("x", 2)]).len(), 1);
/// ```
pub fn candidates(spec: &[(&str, u32)]) -> Vec<Candidate> {
    spec.iter().map(|(id, w)| Candidate::new(id, *w)).collect()
}

struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs a future to completion on the current thread (for `on_admit` in tests and doc examples).
///
/// ```
/// assert_eq!(gemini_proxy_sdk::testing::block_on(async { 2 + 2 }), 4);
/// ```
pub fn block_on<F: Future>(future: F) -> F::Output {
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => std::thread::park(),
        }
    }
}
