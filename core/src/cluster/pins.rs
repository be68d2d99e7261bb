//! Which key created a resource, read from the cluster when this instance does not know it.

use serde_json::Value;

use super::Link;
use super::events::ClusterEvent;
use crate::pool::{KeyPool, PoolEvent};

/// Resources of one call looked up at most.
pub const MAX_LOOKUPS: usize = 8;

/// The keys that created `refs` (resources a call names), from the cluster, for those this
/// instance does not know: a resource made through another instance a moment ago is served by
/// its key here too. Within the link's time budget; nothing found changes nothing.
pub async fn fetch(link: &Link, pool: &KeyPool, refs: &[String]) {
    let missing: Vec<String> = refs
        .iter()
        .filter(|r| pool.pinned(r).is_none())
        .take(MAX_LOOKUPS)
        .map(|r| {
            link.key(&format!(
                "state:pool:{}",
                crate::pool::shared::pin_subject(r)
            ))
        })
        .collect();
    if missing.is_empty() {
        return;
    }
    let Ok(found) = link
        .run(None, move |mut conn| async move {
            redis::cmd("MGET")
                .arg(missing)
                .query_async::<Vec<Option<String>>>(&mut conn)
                .await
        })
        .await
    else {
        return;
    };
    for text in found.into_iter().flatten() {
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        if let Ok(ClusterEvent::Pool(e @ PoolEvent::Pinned { .. })) =
            serde_json::from_value::<ClusterEvent>(v["event"].clone())
        {
            pool.apply_remote(&e);
        }
    }
}
