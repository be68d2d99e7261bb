//! The audit tables and the analysts' views.

/// Version of the tables below; stored in `audit_meta`.
pub const SCHEMA_VERSION: i64 = 2;

/// The tables and views, as one script (the SQL guard's private copy is built from it).
pub static SCHEMA_AND_VIEWS: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("{SCHEMA}\n{VIEWS}"));

/// Version 1 databases gain the instance column (at the end, where version 2 has it).
pub(super) const MIGRATIONS: &str = r#"
ALTER TABLE requests ADD COLUMN IF NOT EXISTS instance_id VARCHAR;
ALTER TABLE request_tags ADD COLUMN IF NOT EXISTS instance_id VARCHAR;
ALTER TABLE config_changes ADD COLUMN IF NOT EXISTS instance_id VARCHAR;
ALTER TABLE security_events ADD COLUMN IF NOT EXISTS instance_id VARCHAR;
"#;

pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS audit_meta (name VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS requests (
    ts TIMESTAMP NOT NULL,
    day DATE NOT NULL,
    quota_day DATE NOT NULL,
    request_id VARCHAR NOT NULL,
    user_id VARCHAR,
    role VARCHAR,
    client_ip VARCHAR,
    method VARCHAR NOT NULL,
    path VARCHAR NOT NULL,
    api VARCHAR NOT NULL,
    model VARCHAR,
    stream BOOLEAN NOT NULL,
    key_id VARCHAR,
    project VARCHAR,
    status USMALLINT NOT NULL,
    upstream_status USMALLINT NOT NULL,
    error_class VARCHAR,
    quota_id VARCHAR,
    attempts UINTEGER NOT NULL,
    retries UINTEGER NOT NULL,
    rotations UINTEGER NOT NULL,
    upstream_429s UINTEGER NOT NULL,
    latency_ms DOUBLE NOT NULL,
    upstream_ms DOUBLE,
    ttfb_ms DOUBLE,
    overhead_ms DOUBLE,
    prompt_tokens UBIGINT NOT NULL,
    candidates_tokens UBIGINT NOT NULL,
    thoughts_tokens UBIGINT NOT NULL,
    cached_tokens UBIGINT NOT NULL,
    total_tokens UBIGINT NOT NULL,
    request_bytes UBIGINT NOT NULL,
    response_bytes UBIGINT NOT NULL,
    risk_score UTINYINT,
    truncated BOOLEAN NOT NULL,
    instance_id VARCHAR
);
CREATE TABLE IF NOT EXISTS request_tags (
    ts TIMESTAMP NOT NULL,
    day DATE NOT NULL,
    request_id VARCHAR NOT NULL,
    tag VARCHAR NOT NULL,
    value VARCHAR NOT NULL,
    instance_id VARCHAR
);
CREATE TABLE IF NOT EXISTS config_changes (
    ts TIMESTAMP NOT NULL,
    day DATE NOT NULL,
    version UINTEGER,
    changed_by VARCHAR,
    source VARCHAR,
    sha256 VARCHAR,
    summary VARCHAR,
    detail VARCHAR,
    instance_id VARCHAR
);
CREATE TABLE IF NOT EXISTS security_events (
    ts TIMESTAMP NOT NULL,
    day DATE NOT NULL,
    event_type VARCHAR NOT NULL,
    action VARCHAR NOT NULL,
    result VARCHAR NOT NULL,
    source_ip VARCHAR,
    detail VARCHAR,
    instance_id VARCHAR
);
CREATE TABLE IF NOT EXISTS key_limits (
    project VARCHAR NOT NULL,
    model VARCHAR NOT NULL,
    rpm UBIGINT,
    tpm UBIGINT,
    rpd UBIGINT
);
"#;

/// The analysts' ready views (recreated at every start, so a new release can change them).
pub(super) const VIEWS: &str = r#"
CREATE OR REPLACE VIEW usage_by_user_model_day AS
SELECT day, coalesce(user_id, '(anonymous)') AS user_id, coalesce(model, '(none)') AS model,
       count(*) AS requests,
       count(*) FILTER (WHERE status >= 400 OR error_class IS NOT NULL) AS failed,
       sum(prompt_tokens) AS prompt_tokens, sum(candidates_tokens) AS candidates_tokens,
       sum(thoughts_tokens) AS thoughts_tokens, sum(cached_tokens) AS cached_tokens,
       sum(total_tokens) AS total_tokens
FROM requests GROUP BY ALL;

CREATE OR REPLACE VIEW quota_usage_by_project_day AS
WITH u AS (
    SELECT quota_day, project, coalesce(model, '(none)') AS model,
           count(*) AS requests, sum(attempts) AS attempts, sum(total_tokens) AS total_tokens,
           sum(upstream_429s) AS upstream_429s
    FROM requests WHERE project IS NOT NULL GROUP BY ALL
)
SELECT u.quota_day, u.project, u.model, u.requests, u.attempts, u.total_tokens, u.upstream_429s,
       coalesce(m.rpd, d.rpd) AS rpd_limit, coalesce(m.rpm, d.rpm) AS rpm_limit,
       coalesce(m.tpm, d.tpm) AS tpm_limit,
       round(100.0 * u.attempts / nullif(coalesce(m.rpd, d.rpd), 0), 1) AS rpd_used_pct
FROM u
LEFT JOIN key_limits m ON m.project = u.project AND m.model = u.model
LEFT JOIN key_limits d ON d.project = u.project AND d.model = '*';

CREATE OR REPLACE VIEW rate_limits_by_quota AS
SELECT day, project, coalesce(model, '(none)') AS model, quota_id,
       count(*) AS calls, sum(upstream_429s) AS upstream_429s,
       count(*) FILTER (WHERE status = 429) AS client_429s
FROM requests WHERE upstream_429s > 0 OR status = 429 GROUP BY ALL;

CREATE OR REPLACE VIEW latency_by_key_model AS
SELECT day, key_id, coalesce(model, '(none)') AS model, count(*) AS requests,
       round(quantile_cont(latency_ms, 0.5), 3) AS p50_ms,
       round(quantile_cont(latency_ms, 0.95), 3) AS p95_ms,
       round(quantile_cont(ttfb_ms, 0.5), 3) AS ttfb_p50_ms,
       round(quantile_cont(ttfb_ms, 0.95), 3) AS ttfb_p95_ms,
       round(quantile_cont(overhead_ms, 0.5), 3) AS overhead_p50_ms
FROM requests WHERE key_id IS NOT NULL GROUP BY ALL;

CREATE OR REPLACE VIEW error_rates AS
SELECT day, key_id, coalesce(model, '(none)') AS model, count(*) AS requests,
       count(*) FILTER (WHERE status >= 400 OR error_class IS NOT NULL) AS errors,
       round(count(*) FILTER (WHERE status >= 400 OR error_class IS NOT NULL) / count(*), 4)
           AS error_rate,
       count(*) FILTER (WHERE status = 429) AS rate_limited,
       count(*) FILTER (WHERE status >= 500) AS server_errors,
       count(*) FILTER (WHERE truncated) AS truncated
FROM requests GROUP BY ALL;

CREATE OR REPLACE VIEW top_users AS
SELECT coalesce(user_id, '(anonymous)') AS user_id, count(*) AS requests,
       sum(total_tokens) AS total_tokens, min(ts) AS first_seen, max(ts) AS last_seen,
       count(*) FILTER (WHERE status >= 400) AS failed
FROM requests GROUP BY ALL ORDER BY total_tokens DESC, requests DESC;
"#;

/// Names analysts can rely on (tables and views), in `GET /api/sql/schema` and the README.
pub const RELATIONS: &[&str] = &[
    "requests",
    "request_tags",
    "config_changes",
    "security_events",
    "key_limits",
    "usage_by_user_model_day",
    "quota_usage_by_project_day",
    "rate_limits_by_quota",
    "latency_by_key_model",
    "error_rates",
    "top_users",
];
