//! Which key created a resource, read from the cluster when this instance does not know it.

use super::Cluster;
use super::events::ClusterEvent;
use crate::pool::{KeyPool, PoolEvent};

/// Resources of one call looked up at most.
pub const MAX_LOOKUPS: usize = 8;

/// The keys that created `refs` (resources a call names), from the cluster, for those this
/// instance does not know: a resource made through another instance a moment ago is served by
/// its key here too. Within the link's time budget; nothing found changes nothing.
pub async fn fetch(cluster: &Cluster, pool: &KeyPool, refs: &[String]) {
    let link = &cluster.link;
    let subjects: Vec<String> = refs
        .iter()
        .filter(|r| pool.pinned(r).is_none())
        .take(MAX_LOOKUPS)
        .map(|r| format!("pool:{}", crate::pool::shared::pin_subject(r)))
        .collect();
    if subjects.is_empty() {
        return;
    }
    let missing: Vec<String> = subjects
        .iter()
        .map(|s| link.key(&format!("state:{s}")))
        .collect();
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
    let signer = cluster.sealer.as_deref();
    for (subject, text) in subjects.iter().zip(found) {
        let Some(event) =
            text.and_then(|t| super::envelope::open_state(&link.instance_id, signer, &t, subject))
        else {
            continue;
        };
        if let Ok(ClusterEvent::Pool(mut e @ PoolEvent::Pinned { .. })) =
            serde_json::from_value::<ClusterEvent>(event)
        {
            if signer.is_none() {
                e = e.without_claims();
            }
            pool.apply_remote(&e);
        }
    }
}
