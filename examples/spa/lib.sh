# shellcheck shell=bash
# Shared by examples/spa/run and examples/spa/test: Node and the pinned npm
# packages, the cluster and the app role (examples/lib.sh, in a directory of
# its own), the server. Source it; it does nothing by itself.

SPA_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# This example's cluster, beside (not instead of) the Flask example's; the
# test names another (SPA_CLUSTER_DIR), so that it never tears down the
# cluster of a demo that runs meanwhile.
EXAMPLE_DIR=${SPA_CLUSTER_DIR:-/tmp/pg_session_auth_spa}
source "$SPA_DIR/../lib.sh"

# Node 18 or later and npm: the machine's, or else Debian's.
spa_ensure_node() {
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        say "installing Debian's nodejs and npm"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
    fi
    local major
    major=$(node -p 'process.versions.node.split(".")[0]')
    [ "$major" -ge 18 ] || die "node $major is too old for examples/spa (18 or later)"
}

# Exactly the packages of package-lock.json, into examples/spa/node_modules
# (git-ignored). No install scripts run: node-postgres needs none.
spa_install_packages() {
    say "npm ci in examples/spa (package-lock.json: node-postgres)"
    (cd "$SPA_DIR" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error >/dev/null)
}

# spa_start_app PORT MAX_AUTH_AGE [LOG]: the server on 127.0.0.1:PORT as the
# app role, in the background (its log to LOG, else to our stdout); sets
# app_pid, and returns once it answers.
spa_start_app() {
    local port=$1 max_auth_age=$2 log=${3:-}
    if [ -n "$log" ]; then
        spa_server "$port" "$max_auth_age" >"$log" 2>&1 &
    else
        spa_server "$port" "$max_auth_age" &
    fi
    app_pid=$!
    example_wait_for_app "http://127.0.0.1:$port" "$app_pid" / \
        || { [ -z "$log" ] || cat "$log" >&2; die "the spa example did not start on port $port"; }
}

# The demo's server: plain http on loopback, so the refresh cookie without
# Secure (SPA_COOKIE_SECURE=0), and the current TOTP code in the step-up
# challenge (SPA_DEMO_CODE=1) for a user who has no authenticator app. Both
# are off by default (server.js).
spa_server() {
    PGHOST=$EXAMPLE_DIR PGPORT=$EXAMPLE_PGPORT PGUSER=$EXAMPLE_ROLE PGDATABASE=postgres SPA_MAX_AUTH_AGE=$2 \
        SPA_COOKIE_SECURE=0 SPA_DEMO_CODE=1 \
        exec node "$SPA_DIR/server.js" --host 127.0.0.1 --port "$1"
}

spa_stop_app() {
    if [ -n "${app_pid:-}" ]; then
        kill "$app_pid" 2>/dev/null || true
        wait "$app_pid" 2>/dev/null || true
    fi
}
