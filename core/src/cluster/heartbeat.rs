//! Each instance says it is alive every second: a sorted set of instance ids by last beat, and
//! one short-lived entry per instance with what `GET /api/cluster` shows (version, config hash,
//! start time, calls in flight). An instance that stops beating drops out after [`ALIVE`].

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::{Link, LinkError};

/// How long an instance counts as live after its last beat.
pub const ALIVE: Duration = Duration::from_secs(5);
const EVERY: Duration = Duration::from_secs(1);

const BEAT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local alive = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - alive)
redis.call('SET', KEYS[2], ARGV[2], 'PX', alive)
return redis.call('ZCARD', KEYS[1])
";

static BEAT_SCRIPT: super::StaticScript = super::StaticScript::new(|| redis::Script::new(BEAT));

/// Beats every second with what `info` reports, for as long as the process runs.
pub fn spawn(link: &Arc<Link>, info: impl Fn() -> Value + Send + Sync + 'static) {
    let weak = Arc::downgrade(link);
    link.spawn(async move {
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(link) = weak.upgrade() else { return };
            let mut v = info();
            v["instance_id"] = link.instance_id.clone().into();
            let zset = link.key("instances");
            let entry = link.key(&format!("instance:{}", link.instance_id));
            let id = link.instance_id.clone();
            let args = vec![id, v.to_string(), ALIVE.as_millis().to_string()];
            let beat = link
                .run(Some(Duration::from_secs(1)), move |c| {
                    super::eval::<u32>(c, &BEAT_SCRIPT, vec![zset, entry], args)
                })
                .await;
            if let Ok(n) = beat {
                link.set_peers(n.max(1));
            }
        }
    });
}

/// The live instances, each as its last beat described it, sorted by id.
pub async fn instances(link: &Link) -> Result<Vec<Value>, LinkError> {
    let zset = link.key("instances");
    let prefix = link.key("instance:");
    let alive = ALIVE.as_millis() as u64;
    let raw: Vec<Option<String>> = link
        .run(Some(Duration::from_secs(1)), move |mut c| async move {
            let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut c).await?;
            let now = secs * 1000 + micros / 1000;
            let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                .arg(&zset)
                .arg(now.saturating_sub(alive))
                .arg("+inf")
                .query_async(&mut c)
                .await?;
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let keys: Vec<String> = ids.iter().map(|id| format!("{prefix}{id}")).collect();
            redis::cmd("MGET").arg(keys).query_async(&mut c).await
        })
        .await?;
    let mut list: Vec<Value> = raw
        .into_iter()
        .flatten()
        .filter_map(|s| serde_json::from_str(&s).ok())
        .filter(Value::is_object)
        .collect();
    list.sort_by(|a, b| a["instance_id"].as_str().cmp(&b["instance_id"].as_str()));
    Ok(list)
}
