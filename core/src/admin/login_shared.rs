//! The login lockout across a cluster: every guess a client makes on any instance counts in one
//! Redis counter per client (`{prefix}login:{client}`), so N instances give no more guesses than
//! one. A right password clears it. Redis away: each instance's own lockout still holds.

use std::net::IpAddr;
use std::time::Duration;

use super::login::{LOCKOUT, MAX_GUESSES, WINDOW};
use crate::runtime::Shared;

/// Counts a guess; returns how long the client must wait when it has none left.
const RESERVE: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
if n > tonumber(ARGV[2]) then
  redis.call('DECR', KEYS[1])
  return math.max(redis.call('PTTL', KEYS[1]), 1000)
end
return 0
";

/// A wrong guess that used up the last one locks the client out for the lockout period.
const SETTLE: &str = r"
if ARGV[1] == 'ok' then return redis.call('DEL', KEYS[1]) end
if tonumber(redis.call('GET', KEYS[1]) or '0') >= tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 0
";

static RESERVE_SCRIPT: crate::cluster::StaticScript =
    crate::cluster::StaticScript::new(|| redis::Script::new(RESERVE));
static SETTLE_SCRIPT: crate::cluster::StaticScript =
    crate::cluster::StaticScript::new(|| redis::Script::new(SETTLE));

fn counter(shared: &Shared, who: IpAddr) -> Option<(std::sync::Arc<crate::cluster::Link>, String)> {
    let c = shared.cluster.as_ref()?;
    Some((c.link.clone(), c.link.key(&format!("login:{who}"))))
}

/// Reserves a guess in the cluster; `Some(wait)` when the client has none left there.
pub(super) async fn reserve(shared: &Shared, who: IpAddr) -> Option<Duration> {
    let (link, key) = counter(shared, who)?;
    let args = vec![WINDOW.as_millis().to_string(), MAX_GUESSES.to_string()];
    let wait: i64 = link
        .run(Some(Duration::from_secs(1)), move |c| {
            crate::cluster::eval(c, &RESERVE_SCRIPT, vec![key], args)
        })
        .await
        .ok()?;
    (wait > 0).then(|| Duration::from_millis(wait as u64))
}

/// Settles a guess in the cluster (in the background).
pub(super) fn settle(shared: &Shared, who: IpAddr, ok: bool) {
    let Some((link, key)) = counter(shared, who) else {
        return;
    };
    let args = vec![
        if ok { "ok" } else { "wrong" }.to_string(),
        MAX_GUESSES.to_string(),
        LOCKOUT.as_millis().to_string(),
    ];
    let l = link.clone();
    link.spawn(async move {
        let _ = l
            .run(Some(Duration::from_secs(1)), move |c| {
                crate::cluster::eval::<i64>(c, &SETTLE_SCRIPT, vec![key], args)
            })
            .await;
    });
}
