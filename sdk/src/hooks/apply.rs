//! Applying a hook's decisions to the call: route changes and weights, validated first.

use super::*;

/// Applies a route decision to the call: tags are added, the model and project go to
/// [`RequestContext::routing`], a rejection becomes an [`Admission::Reject`]. Invalid values
/// (a model with `/`, a status outside 400-599, a model change on an `/openai/` path, whose
/// model is in the body) are an error and change nothing.
///
/// ```
/// use gemini_proxy_sdk::hooks::{apply_route, RouteChange, RouteDecision};
/// let mut cx = gemini_proxy_sdk::testing::request("POST", "/v1beta/models/gemini-2.5-pro:generateContent");
/// apply_route(&mut cx, RouteDecision::Change(RouteChange::model("gemini-2.5-flash").with_tag("why", "short"))).unwrap();
/// assert_eq!(cx.routing.model.as_deref(), Some("gemini-2.5-flash"));
/// assert_eq!(cx.tags.get("why").map(String::as_str), Some("short"));
/// assert!(apply_route(&mut cx, RouteDecision::Change(RouteChange::model("x/y"))).is_err());
/// ```
pub fn apply_route(
    cx: &mut RequestContext,
    decision: RouteDecision,
) -> Result<Admission, HookError> {
    match decision {
        RouteDecision::Keep => Ok(Admission::Continue),
        RouteDecision::Reject { status, message } => {
            if !(400..=599).contains(&status) {
                return Err(HookError::new(
                    "invalid",
                    format!("reject status {status} is not 400-599"),
                ));
            }
            let message = crate::prefix_within(&message, 1024).to_string();
            Ok(Admission::Reject(
                Rejection::new(status, message).reason("script"),
            ))
        }
        RouteDecision::Change(change) => {
            if let Some(m) = &change.model {
                if !valid_name(m) {
                    return Err(HookError::new(
                        "invalid",
                        "model must be 1-128 of A-Z a-z 0-9 . _ -",
                    ));
                }
                // A route never takes a caller to a model its token does not allow.
                if let Some(globs) = cx
                    .identity
                    .as_ref()
                    .and_then(|i| i.claims.get("models"))
                    .and_then(|v| v.as_array())
                    && !globs.is_empty()
                    && !globs
                        .iter()
                        .filter_map(|g| g.as_str())
                        .any(|g| crate::glob_match(g, m))
                {
                    return Err(HookError::new(
                        "invalid",
                        format!("model `{m}` is not allowed for this caller's token"),
                    ));
                }
                if cx.request.model.is_none() {
                    return Err(HookError::new(
                        "invalid",
                        format!(
                            "this call has no model in its path ({}), so it cannot be rewritten",
                            cx.request.action.as_str()
                        ),
                    ));
                }
            }
            if let Some(p) = &change.project
                && !valid_name(p)
            {
                return Err(HookError::new(
                    "invalid",
                    "project must be 1-128 of A-Z a-z 0-9 . _ -",
                ));
            }
            if change.tags.len() > 16 {
                return Err(HookError::new("invalid", "at most 16 tags per call"));
            }
            if change.tags.iter().any(|(k, _)| !valid_name(k)) {
                return Err(HookError::new(
                    "invalid",
                    "tag names are 1-128 of A-Z a-z 0-9 . _ -",
                ));
            }
            for (k, v) in change.tags {
                cx.tags.insert(k, crate::prefix_within(&v, 128).to_string());
            }
            if let Some(m) = change.model {
                cx.routing.model = Some(m);
            }
            if let Some(p) = change.project {
                cx.routing.project = Some(p);
            }
            Ok(Admission::Continue)
        }
    }
}

/// Applies a weigh decision to the selection. `index` maps each candidate the hook saw to its
/// index in `sel` (as returned by [`HookCandidate::from_selection`]). A wrong number of weights
/// or an index out of range is an error and changes nothing.
///
/// ```
/// use gemini_proxy_sdk::{Selection, hooks::{apply_weigh, HookCandidate, WeighDecision}};
/// let c = gemini_proxy_sdk::testing::candidates(&[("a", 1), ("b", 1)]);
/// let mut sel = Selection::new(&c);
/// let (_, index) = HookCandidate::from_selection(&sel, None);
/// apply_weigh(&mut sel, &index, WeighDecision::Choose(1)).unwrap();
/// assert_eq!(sel.chosen().map(|c| &*c.id), Some("b"));
/// ```
pub fn apply_weigh(
    sel: &mut Selection<'_>,
    index: &[usize],
    decision: WeighDecision,
) -> Result<(), HookError> {
    match decision {
        WeighDecision::Keep => Ok(()),
        WeighDecision::Choose(i) => {
            let Some(&at) = index.get(i) else {
                return Err(HookError::new(
                    "invalid",
                    format!("chose candidate {i} of {}", index.len()),
                ));
            };
            if sel.choose(at) {
                Ok(())
            } else {
                Err(HookError::new(
                    "invalid",
                    format!("candidate {i} is not eligible"),
                ))
            }
        }
        WeighDecision::Weights(w) => {
            if w.len() != index.len() {
                return Err(HookError::new(
                    "invalid",
                    format!("{} weights for {} candidates", w.len(), index.len()),
                ));
            }
            if !index.is_empty() && w.iter().all(|&x| x == 0) {
                return Err(HookError::new("invalid", "every weight is 0"));
            }
            for (&at, &weight) in index.iter().zip(&w) {
                sel.set_weight(at, weight);
            }
            Ok(())
        }
    }
}
