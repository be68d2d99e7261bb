//! Admission: what the request head says (size, CORS preflight, path, route, model), the
//! pipeline's view of it, and the pipeline's admission phase (authentication, limits, routing).

use gemini_proxy_sdk::{Rejection, RequestContext, RequestView};
use pingora::proxy::Session;

use super::call::CallState;
use super::failure::{ErrorClass, Failure};
use super::{GatewayProxy, Inbound, client_ip, cors, inbound, model};

impl GatewayProxy {
    /// Reads the head into a route and admits it; `None` when the call is already answered
    /// (a CORS preflight).
    pub(super) async fn admit(
        &self,
        session: &mut Session,
        ctx: &mut CallState,
    ) -> Result<Option<Inbound>, Failure> {
        let rt = ctx.runtime.clone();
        check_header_size(session, rt.config.server.max_header_bytes)?;
        if cors::is_preflight(&rt, session) {
            cors::preflight(session, ctx).await?;
            return Ok(None);
        }
        let mut inbound = route(session)?;
        // A declared body over the limit is refused before anything is charged for it.
        let limit = body_limit(&rt.config.server, &inbound);
        if inbound.content_length.is_some_and(|n| n > limit) {
            return Err(Failure::too_large("request body", limit));
        }
        ctx.api = inbound.route.api_kind.as_str();
        ctx.action = inbound.route.action.as_str();
        ctx.done.streamed = inbound.route.stream;
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let mut view = RequestView::from_route(
            ctx.request_id.clone(),
            session.req_header().method.clone(),
            inbound.path.clone(),
            &inbound.route,
        );
        view.query = inbound.query.clone();
        view.headers = inbound.headers.clone();
        view.client_ip = client_ip(peer, &session.req_header().headers, &rt.trusted_proxies);
        view.body_size = inbound.content_length;
        let cx = ctx
            .cx
            .insert(RequestContext::new(view, inbound.credential.clone()));
        // A Live session names its model in its first message: admitted once that is read.
        if inbound.route.api_kind == gemini_proxy_sdk::ApiKind::Live {
            return Ok(Some(inbound));
        }
        match rt.pipeline.admit(cx).await {
            Ok(None) => {}
            Ok(Some(rejection)) => return Err(self.refused(ctx, rejection)),
            Err(stage) => return Err(Failure::stage(&ctx.request_id, stage).unread()),
        }
        apply_model_routing(ctx, &mut inbound);
        Ok(Some(inbound))
    }

    /// A pipeline refusal: counted, logged and audited like every refused call.
    pub(super) fn refused(&self, ctx: &CallState, rejection: Rejection) -> Failure {
        let reason = rejection.reason.unwrap_or("other");
        let ip = ctx.cx.as_ref().and_then(|c| c.request.client_ip);
        if matches!(rejection.status, 401 | 403) {
            self.shared
                .metrics
                .auth_failures
                .with_label_values(&[reason])
                .inc();
            tracing::info!(target: "gemini_proxy::security", request_id = %ctx.request_id, status = rejection.status, reason, client_ip = ?ip, "call refused");
        }
        if matches!(rejection.status, 401 | 403 | 429) {
            self.shared.audit(crate::audit::security_event(
                &format!("request refused: {reason}"),
                "Blocked",
                ip.map(|ip| ip.to_string()),
                serde_json::json!({"request_id": ctx.request_id, "status": rejection.status}),
            ));
        }
        Failure::rejected(rejection)
    }
}

/// The most body bytes a call may carry: uploads have their own limit.
pub(super) fn body_limit(server: &crate::config::ServerConfig, inbound: &Inbound) -> u64 {
    if inbound.route.api_kind == gemini_proxy_sdk::ApiKind::Upload {
        server.max_upload_bytes
    } else {
        server.max_body_bytes
    }
}

fn check_header_size(session: &Session, max: u64) -> Result<(), Failure> {
    let req = session.req_header();
    let header_bytes: u64 = req
        .headers
        .iter()
        .map(|(k, v)| (k.as_str().len() + v.len() + 4) as u64)
        .sum::<u64>()
        + req.uri.path_and_query().map_or(0, |p| p.as_str().len()) as u64
        + req.uri.authority().map_or(0, |a| a.as_str().len()) as u64;
    if header_bytes > max {
        return Err(Failure::new(
            431,
            ErrorClass::HeadersTooLarge,
            format!("request headers are larger than {max} bytes"),
        )
        .unread());
    }
    Ok(())
}

/// The route of the path as Google will read it; path tricks and bad model names refused.
fn route(session: &Session) -> Result<Inbound, Failure> {
    let req = session.req_header();
    // The Gemini API speaks these; TRACE, CONNECT and invented methods are not passed on.
    if !matches!(
        req.method.as_str(),
        "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS"
    ) {
        return Err(Failure::new(
            405,
            ErrorClass::BadRequest,
            format!("method {} is not accepted", req.method),
        )
        .unread());
    }
    if inbound::path_is_suspicious(req.uri.path()) {
        return Err(Failure::new(
            400,
            ErrorClass::BadPath,
            "the path contains dot segments or encoded separators",
        )
        .unread());
    }
    let path = inbound::normalized_path(req.uri.path())
        .map_err(|why| Failure::new(400, ErrorClass::BadPath, why).unread())?;
    let Some(inbound) = Inbound::parse(req.method.as_str(), &path, req.uri.query(), &req.headers)
    else {
        return Err(Failure::new(
            404,
            ErrorClass::NotFound,
            format!("no route for {} {}", req.method, req.uri.path()),
        )
        .unread());
    };
    // Read after the credential (`key=`, `access_token=`) is lifted out of the query.
    if let Some(why) = inbound::refused_system_parameter(inbound.query.as_deref(), &req.headers) {
        return Err(Failure::new(400, ErrorClass::BadRequest, why).unread());
    }
    if let Some(m) = &inbound.route.model
        && !model::valid_model(m)
    {
        return Err(Failure::bad_model().unread());
    }
    Ok(inbound)
}

/// A routing stage chose another model: it goes into the upstream path.
fn apply_model_routing(ctx: &mut CallState, inbound: &mut Inbound) {
    let request_id = ctx.request_id.clone();
    let cx = ctx.cx();
    let Some(model) = cx.routing.model.take() else {
        return;
    };
    let old = cx.request.model.clone().unwrap_or_default();
    if old == model {
        return;
    }
    match model::rewrite_model(&inbound.path, &old, &model) {
        Some(path) => {
            inbound.path = path.clone();
            cx.request.path = path;
            cx.request.model = Some(model);
            cx.tags.insert("model_requested".into(), old);
        }
        None => {
            tracing::warn!(request_id = %request_id, "routing asked for a model change on a path without a model segment; kept");
        }
    }
}
