# Sourced by scripts/demo and scripts/test: installs the system packages the build needs
# (cmake for Pingora's zlib-ng; g++ for the bundled DuckDB, ccache so its rebuilds per feature
# graph hit a cache; for the tests: python3-venv for the
# conformance clients, pebble, the ACME test server, redis-server and nginx for the cluster tests, openssl for the Live conformance's certificate, chromium and chromium-driver for the console's browser test), or stops with the exact command to run.
# Usage: need_packages [python]
need_packages() {
  local missing=()
  command -v cmake >/dev/null || missing+=(cmake)
  command -v cc >/dev/null || missing+=(gcc)
  command -v c++ >/dev/null || missing+=(g++)
  if [ "${1:-}" = python ]; then
    command -v python3 >/dev/null || missing+=(python3)
    python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
    command -v curl >/dev/null || missing+=(curl)
    [ -x /usr/bin/pebble ] || [ -x /usr/local/bin/pebble ] || missing+=(pebble)
    command -v redis-server >/dev/null || missing+=(redis-server)
    command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
    command -v openssl >/dev/null || missing+=(openssl)
    [ -x /usr/bin/chromium ] || missing+=(chromium)
    [ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
  fi
  # ccache only speeds rebuilds up: installed when we can, never a reason to stop.
  if ! command -v ccache >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then missing+=(ccache)
    else echo "note: without ccache every cargo feature graph rebuilds DuckDB (~25 min); to avoid it: sudo apt-get install -y ccache" >&2; fi
  fi
  install_packages "${missing[@]}"
}

# Usage: need_tools COMMAND:PACKAGE ... (the benchmarks' tools: wrk:wrk nginx:nginx-light ...)
need_tools() {
  local missing=() pair
  for pair; do command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}"); done
  install_packages "${missing[@]}"
}

# Installs the packages named (none: nothing to do) with apt-get when root, or stops with the
# exact command to run.
install_packages() {
  (($#)) || return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing: $*"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    echo "missing system packages; run: sudo apt-get install -y $*" >&2
    exit 2
  fi
}
