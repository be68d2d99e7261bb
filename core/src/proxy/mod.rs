//! The proxy listener. Pingora's `request_filter` drives each call itself, so a request body
//! can be resent on another key at any size and SSE is never buffered. A call's path, in
//! order, one module per phase:
//!
//! 1. [`admission`]: the head (size, CORS preflight, path, route, model), the pipeline's view
//!    of the request and its admission phase (auth, limits, routing);
//! 2. [`body`]: the body read whole (bounded), or an upload streamed later; the body phase;
//! 3. [`resources`]: the resources the call names, their project and their owner;
//! 4. [`attempts`]: keys tried until one answers, each chosen by [`key_choice`] and used for
//!    one [`exchange`] with the upstream (request head from [`upstream_request`]);
//! 5. [`relay`]: the answer relayed to the client, whole or streamed as it arrives;
//! 6. [`finish`]: the call's one outcome handed to metrics, pool, stats, anomalies, pipeline
//!    and audit.
//!
//! A Live API session (a WebSocket) leaves this path after its head: [`live`].
//!
//! What went wrong is a [`failure::Failure`] with an [`ErrorClass`]; [`call::CallState`] is
//! everything a call carries from its first byte to its audit row.

mod admission;
mod attempts;
mod body;
mod call;
mod client_ip;
mod cors;
mod errors;
mod exchange;
mod failure;
mod finish;
mod fuzz;
mod inbound;
mod key_choice;
mod live;
mod model;
mod observer;
mod relay;
mod resources;
mod response_head;
pub mod tenancy;
mod upstream_request;

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use pingora::ErrorType;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};

pub use crate::scrub::{Scrubber, StreamScrub};
pub use crate::util::Cidr;
pub use call::CallState;
pub use client_ip::client_ip;
pub use errors::{ErrorStyle, error_body, grpc_status};
pub use failure::ErrorClass;
pub use fuzz::fuzz_inbound;
pub use inbound::{Inbound, sanitize_headers, split_key_param};
pub use observer::{BodyFormat, Observed, Observer};
pub use upstream_request::upstream_request;

use crate::runtime::Shared;
use failure::{Failure, write_failure};

pub struct GatewayProxy {
    shared: Arc<Shared>,
}

impl GatewayProxy {
    pub fn new(shared: Arc<Shared>) -> GatewayProxy {
        GatewayProxy { shared }
    }

    /// The phases of a call, in order.
    async fn handle(&self, session: &mut Session, ctx: &mut CallState) -> Result<(), Failure> {
        let Some(inbound) = self.admit(session, ctx).await? else {
            return Ok(());
        };
        if inbound.route.api_kind == gemini_proxy_sdk::ApiKind::Live {
            return self.live(session, ctx, inbound).await;
        }
        let body = self.body(session, ctx, &inbound).await?;
        let refs = self.resources(ctx, &inbound, &body).await?;
        if ctx.done.streamed {
            self.shared.metrics.streams_active.inc();
            ctx.counted_stream = true;
        }
        self.attempts(session, ctx, &inbound, body, &refs).await
    }
}

#[async_trait]
impl ProxyHttp for GatewayProxy {
    type CTX = CallState;

    fn new_ctx(&self) -> CallState {
        CallState::new(self.shared.runtime.load_full())
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut CallState,
    ) -> pingora::Result<Box<HttpPeer>> {
        // Never reached: request_filter answers every call itself.
        Error::e_explain(ErrorType::InternalError, "upstream phase is not used")
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut CallState,
    ) -> pingora::Result<bool> {
        ctx.started = Instant::now();
        let incoming = session
            .req_header()
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok());
        ctx.set_request_id(incoming);
        ctx.style = ErrorStyle::for_path(session.req_header().uri.path());
        // A client that stops reading (a stream it never drains) loses the call.
        session
            .downstream_session
            .set_write_timeout(Some(ctx.runtime.config.server.clients.write_timeout.0));
        self.shared.metrics.in_flight.inc();
        ctx.counted_in_flight = true;
        if let Err(f) = self.handle(session, ctx).await {
            write_failure(session, ctx, f).await;
        }
        Ok(true)
    }

    async fn logging(
        &self,
        session: &mut Session,
        _e: Option<&pingora::Error>,
        ctx: &mut CallState,
    ) {
        self.finish(session, ctx).await;
    }
}
