use crate::{
    CompletedRequest, PluginError, Rejection, RequestContext, ResponseHead, Selection,
    UpstreamOutcome,
};

/// The set of hooks a plugin implements. The gateway calls a hook only for plugins that declare
/// it, so a plugin costs nothing in phases it does not use.
///
/// ```
/// use gemini_proxy_sdk::Phases;
/// let p = Phases::ADMIT | Phases::COMPLETE;
/// assert!(p.contains(Phases::ADMIT));
/// assert!(!p.contains(Phases::SELECT));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Phases(u8);

impl Phases {
    /// No hooks.
    pub const NONE: Phases = Phases(0);
    /// [`Plugin::on_admit`].
    pub const ADMIT: Phases = Phases(1);
    /// [`Plugin::on_select`].
    pub const SELECT: Phases = Phases(1 << 1);
    /// [`Plugin::on_upstream_response`].
    pub const UPSTREAM: Phases = Phases(1 << 2);
    /// [`Plugin::on_response`] and [`Plugin::on_response_chunk`].
    pub const RESPONSE: Phases = Phases(1 << 3);
    /// [`Plugin::on_complete`].
    pub const COMPLETE: Phases = Phases(1 << 4);
    /// [`Plugin::on_body`].
    pub const BODY: Phases = Phases(1 << 5);
    /// Every hook.
    pub const ALL: Phases = Phases(0b11_1111);

    /// True if every hook in `other` is in `self`.
    ///
    /// ```
    /// assert!(gemini_proxy_sdk::Phases::ALL.contains(gemini_proxy_sdk::Phases::SELECT));
    /// ```
    pub fn contains(self, other: Phases) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Phases {
    type Output = Phases;
    fn bitor(self, rhs: Phases) -> Phases {
        Phases(self.0 | rhs.0)
    }
}

/// The result of the admit phase for one plugin.
///
/// ```
/// use gemini_proxy_sdk::{Admission, Rejection};
/// let a = Admission::Reject(Rejection::new(401, "missing token"));
/// assert!(matches!(a, Admission::Reject(_)));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Admission {
    /// Go on with the next plugin.
    Continue,
    /// Refuse the call; no later plugin runs and no upstream is contacted.
    Reject(Rejection),
}

/// A pipeline stage. Implement the hooks you need, declare them in [`phases`](Self::phases),
/// register a [`PluginFactory`](crate::PluginFactory), and name the stage in the YAML
/// `pipeline:` list. Stages run in list order within each phase; there are no priorities.
///
/// Hooks other than `on_admit` and `on_body` are synchronous and run on the request's task: they must not
/// block (no file or network I/O; hand work to a channel).
///
/// ```
/// use gemini_proxy_sdk::{Phases, Plugin, Selection, RequestContext, PluginError, Candidate};
///
/// /// Picks the first eligible key: a complete (if naive) strategy.
/// struct First;
/// impl Plugin for First {
///     fn name(&self) -> &str { "first" }
///     fn phases(&self) -> Phases { Phases::SELECT }
///     fn on_select(&self, _cx: &RequestContext, sel: &mut Selection<'_>) -> Result<(), PluginError> {
///         let first = sel.eligible().next().map(|(i, _)| i);
///         if let Some(i) = first { sel.choose(i); }
///         Ok(())
///     }
/// }
/// let cands = [Candidate::new("a", 1), Candidate::new("b", 1)];
/// let mut sel = Selection::new(&cands);
/// let cx = gemini_proxy_sdk::testing::request("GET", "/v1beta/models");
/// First.on_select(&cx, &mut sel).unwrap();
/// assert_eq!(sel.chosen().map(|c| &*c.id), Some("a"));
/// ```
#[crate::async_trait]
pub trait Plugin: Send + Sync + 'static {
    /// A short name for logs and metrics (usually the factory's `KIND`).
    fn name(&self) -> &str;

    /// The hooks this plugin implements.
    fn phases(&self) -> Phases;

    /// Admission: authenticate, limit, score or reject. May await (no locks held across it).
    async fn on_admit(&self, _cx: &mut RequestContext) -> Result<Admission, PluginError> {
        Ok(Admission::Continue)
    }

    /// The request body has been read whole (buffered calls; uploads are streamed and skip this):
    /// the second half of admission. `cx.request.body_size` is now the size read, and on
    /// OpenAI-style paths `cx.request.model` and `cx.request.stream` come from the body. Charge
    /// what depends on the body here (tokens), refuse what the body reveals (a model the
    /// caller may not use). Runs before any key is chosen. May await (no locks held across it).
    async fn on_body(
        &self,
        _cx: &mut RequestContext,
        _body: &[u8],
    ) -> Result<Admission, PluginError> {
        Ok(Admission::Continue)
    }

    /// Key selection for one attempt: filter, re-weigh or choose.
    fn on_select(
        &self,
        _cx: &RequestContext,
        _selection: &mut Selection<'_>,
    ) -> Result<(), PluginError> {
        Ok(())
    }

    /// The outcome of one upstream attempt (status, parsed error), before the client sees it.
    fn on_upstream_response(
        &self,
        _cx: &RequestContext,
        _outcome: &UpstreamOutcome,
    ) -> Result<(), PluginError> {
        Ok(())
    }

    /// The response head on its way to the client.
    fn on_response(
        &self,
        _cx: &mut RequestContext,
        _head: &ResponseHead,
    ) -> Result<(), PluginError> {
        Ok(())
    }

    /// A chunk of the response body on its way to the client (observe only).
    fn on_response_chunk(&self, _cx: &mut RequestContext, _chunk: &[u8]) {}

    /// The call is finished (successfully or not). Enqueue, never block.
    fn on_complete(&self, _cx: &RequestContext, _done: &CompletedRequest) {}
}
