# Sourced by the benchmark scripts: what they share.
source "$(dirname "${BASH_SOURCE[0]}")/prereqs.sh"

# The one release invocation of every benchmark (extra targets may be added): one cargo feature
# graph, so DuckDB is compiled once for all of them.
release_build() {
  local args=(build --release --locked -p gemini-proxy-core --bin gemini-proxy --example bare_pingora --example audit_sql_bench "$@")
  cargo "${args[@]}" >/dev/null 2>&1 || cargo "${args[@]}"
}

# The full pipeline, as a real deployment runs it (JWT auth, rate limit, security score, key
# selection; audit is on by default), as top-level YAML lines; the token secret is for
# `gemini-proxy token --config`.
FULL_PIPELINE='pool: { state_file: "", keys_file: "" }
auth: { enabled: true, jwt_secret: "Bench-secret-0123456789-abcdefghijkl!", revocations_file: "" }
pipeline:
  - rate_limit: { per_ip: { rpm: 100000000 }, per_user: { rpm: 100000000 } }
  - security_score
  - key_select'
