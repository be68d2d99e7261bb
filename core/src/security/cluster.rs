//! The cluster's Redis: it holds the limits, key health and revocations every instance obeys,
//! so whoever can write to it can lift limits or revive a revoked token; without
//! `cluster.secret` it could also forge operators' actions.

use super::{Findings, Severity, loopback};
use crate::config::Config;

pub(super) fn findings(c: &Config, f: &mut Findings) {
    let Some(k) = &c.cluster else { return };
    let Some((host, tls, password)) = crate::config::redis_endpoint(&k.redis) else {
        return;
    };
    if loopback(&host) {
        return;
    }
    if !password {
        f.add(
            "cluster-redis-without-password",
            Severity::High,
            "CWE-306",
            format!("the cluster's Redis at {host} is used without a password"),
            "set requirepass (or an ACL user) on Redis and put it in cluster.redis or REDIS_URL",
        );
    }
    if !tls {
        f.add(
            "cluster-redis-cleartext",
            Severity::Medium,
            "CWE-319",
            format!("the cluster's Redis at {host} is reached without TLS: its password and the shared state travel in clear text"),
            "use rediss:// (Redis with TLS), or keep Redis on a private network you trust",
        );
    }
    if k.secret.is_none() {
        f.add(
            "cluster-events-unsigned",
            Severity::Medium,
            "CWE-345",
            format!("the instances' events through {host} are not signed (no cluster.secret): whoever can write to that Redis can disable or remove keys and revoke tokens on every instance"),
            "set the same cluster.secret (CLUSTER_SECRET) on every instance: openssl rand -hex 32",
        );
    }
}
