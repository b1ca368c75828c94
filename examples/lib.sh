# Shared by examples/run and examples/test (and examples/spa/): the
# extension, the venv, Chromium, the throwaway cluster with the app role, the
# browser test's run. Source it; it does nothing by itself.

EXAMPLES_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$EXAMPLES_DIR/../scripts/lib.sh"

# The cluster (and the app's log); each example has its own, so both can run at once.
EXAMPLE_DIR=${EXAMPLE_DIR:-/tmp/pg_session_auth_example}
EXAMPLE_VENV=${EXAMPLE_VENV:-/tmp/pg_session_auth_example_venv}
EXAMPLE_ROLE=example_app
EXAMPLE_PGPORT=${PGPORT_FOR_TESTS:-5432}           # names the socket file only: no TCP
EXAMPLE_APP_DSN="host=$EXAMPLE_DIR port=$EXAMPLE_PGPORT dbname=postgres user=$EXAMPLE_ROLE"
EXAMPLE_SUPERUSER_DSN="host=$EXAMPLE_DIR port=$EXAMPLE_PGPORT dbname=postgres user=postgres"

# Builds and installs the extension when it is not installed yet (or always
# with EXAMPLE_BUILD=1): the example runs against the installed one.
example_ensure_extension() {
    if [ "${EXAMPLE_BUILD:-0}" = 1 ] \
        || [ ! -f "$("$PG_CONFIG" --sharedir)/extension/pg_session_auth.control" ]; then
        ensure_toolchain
        install_extension
    fi
}

# A venv with the pinned examples/requirements.txt.
example_ensure_venv() {
    local venv=$EXAMPLE_VENV
    venv_works() { [ -x "$venv/bin/python" ] && "$venv/bin/python" -m pip --version >/dev/null 2>&1; }
    if ! venv_works; then
        rm -rf "$venv"
        local made='' py
        # python3 may be a pyenv build or Debian's (which needs python3-venv).
        for py in python3 /usr/bin/python3; do
            command -v "$py" >/dev/null 2>&1 || continue
            if "$py" -m venv "$venv" >/dev/null 2>&1 && venv_works; then made=1; break; fi
            rm -rf "$venv"
        done
        if [ -z "$made" ]; then
            as_root apt-get update -qq
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
            /usr/bin/python3 -m venv "$venv" && venv_works || die "cannot create a venv in $venv"
        fi
    fi
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$EXAMPLES_DIR/requirements.txt"
}

# Debian's chromium for the browser tests, installed if missing (Playwright's
# own browser download is not used). Without it the browser tests skip.
example_ensure_chromium() {
    command -v chromium >/dev/null 2>&1 && return
    say "installing Debian's chromium"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
        || echo "warning: could not install chromium; the browser tests will be skipped" >&2
}

# example_cluster_up ROLE_SETTINGS_SQL [postgresql.conf lines...]
# A fresh cluster in $EXAMPLE_DIR with the extension in database postgres and
# the LOGIN role $EXAMPLE_ROLE whose only privilege is
# `GRANT session_auth_client`. ROLE_SETTINGS_SQL is a list of
# `session_auth.x = 'v'` assignments applied with ALTER ROLE (the DBA's
# policy for this application), before the app opens any connection.
example_cluster_up() {
    local settings=$1; shift
    say "starting a throwaway cluster in $EXAMPLE_DIR (Unix socket only)"
    start_cluster "$EXAMPLE_DIR" "$@"
    cluster_psql "$EXAMPLE_DIR" -d postgres -q <<SQL
CREATE EXTENSION pg_session_auth;
CREATE ROLE $EXAMPLE_ROLE LOGIN;
GRANT session_auth_client TO $EXAMPLE_ROLE;
SQL
    local assignment
    while IFS= read -r assignment; do
        [ -n "$assignment" ] || continue
        cluster_psql "$EXAMPLE_DIR" -d postgres -q -c "ALTER ROLE $EXAMPLE_ROLE SET $assignment"
    done <<<"$settings"
}

example_cluster_down() {
    stop_cluster "$EXAMPLE_DIR"
    rm -rf "$EXAMPLE_DIR"
}

# Small stdlib snippets run in the venv's Python when there is one (the
# tests), else in the system's python3 (examples/spa/run makes no venv).
example_python() {
    if [ -x "$EXAMPLE_VENV/bin/python" ]; then "$EXAMPLE_VENV/bin/python" "$@"; else python3 "$@"; fi
}

# A free TCP port on the loopback interface.
example_free_port() {
    example_python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# example_wait_for_app URL PID [PATH]: until the app answers a GET of PATH
# (default /login) with a 2xx (15 s at most, and not once PID has died).
example_wait_for_app() {
    local url=$1 pid=$2 path=${3:-/login} i
    for i in $(seq 150); do
        kill -0 "$pid" 2>/dev/null || return 1
        if example_python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' \
            "$url$path" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

# example_run_pytest APP_LOG TEST_FILE [pytest args...]: the browser test in
# the venv (the caller exports what it reads), then its exit code, with the
# end of the app's log when it failed. "No tests collected" is a failure.
example_run_pytest() {
    local app_log=$1 test_file=$2 rc
    shift 2
    set +e
    PYTHONDONTWRITEBYTECODE=1 \
        "$EXAMPLE_VENV/bin/python" -m pytest -q -rs -p no:cacheprovider --rootdir "$EXAMPLES_DIR" \
        "$test_file" "$@"
    rc=$?
    set -e
    if [ "$rc" != 0 ]; then
        echo "--- the app's log (last 40 lines) ---" >&2
        tail -n 40 "$app_log" >&2
    fi
    if [ "$rc" = 5 ]; then
        echo "error: pytest collected no tests" >&2
        return 1
    fi
    return "$rc"
}
