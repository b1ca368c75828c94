# A Debian trixie chroot, for the PostgreSQL majors the host's Debian
# (bookworm) does not package: 17. Source it (scripts/lib.sh does); nothing
# runs by itself.
#
#   ensure_chroot            make it once: debootstrap, then PostgreSQL and the
#                            build tools from trixie's own packages
#   in_chroot CMD...         run CMD inside, in the repository, with the host's
#                            Rust toolchain and cargo registry bind-mounted
#                            (CHROOT_KEEP_MOUNTS=1: leave them mounted after)
#
# Packages of two Debian suites never mix on the host: everything of trixie
# lives under $CHROOT. The chroot keeps its own /tmp, pgrx configuration and
# cargo target directory, so its builds never disturb the host's.

CHROOT=${PG_SESSION_AUTH_CHROOT:-/srv/pg_session_auth-trixie}
CHROOT_MIRROR=${PG_SESSION_AUTH_CHROOT_MIRROR:-http://deb.debian.org/debian}
# Debian's Rust toolchain too: the host's is used when it is rustup's (its
# home is bound in, and comes first on the PATH), but a host toolchain from
# Debian's packages links the host's libraries and cannot run in here.
CHROOT_PACKAGES=(postgresql-17 postgresql-server-dev-17 libclang-dev clang
                 pkg-config sudo python3 python3-venv ca-certificates gcc make procps
                 pgbouncer rustc-web cargo-web rust-web-clippy rustfmt-web)

ensure_chroot() {
    if [ -f "$CHROOT/.pg_session_auth-ready" ]; then
        return
    fi
    command -v debootstrap >/dev/null || {
        say "installing debootstrap"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    }
    say "making a Debian trixie chroot in $CHROOT (about a minute, once)"
    remove_chroot
    as_root debootstrap --variant=minbase trixie "$CHROOT" "$CHROOT_MIRROR" >/dev/null
    # Packages must not start services inside the chroot.
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$CHROOT/usr/sbin/policy-rc.d" >/dev/null
    as_root chmod +x "$CHROOT/usr/sbin/policy-rc.d"
    local status=0
    {
        chroot_mounts &&
            chroot_network &&
            as_root chroot "$CHROOT" apt-get update -qq &&
            as_root chroot "$CHROOT" env DEBIAN_FRONTEND=noninteractive \
                apt-get install -y -qq --no-install-recommends "${CHROOT_PACKAGES[@]}" >/dev/null
    } || status=$?
    # Whatever happened: the host's /dev, /proc, repository and cargo home
    # must not stay bound inside a half-made chroot.
    chroot_unmount
    [ "$status" = 0 ] || die "could not set up the chroot in $CHROOT (exit $status)"
    as_root touch "$CHROOT/.pg_session_auth-ready"
}

# Deletes the chroot, never through a mount: a bound /dev, repository or
# cargo home left by an interrupted run would otherwise be deleted with it.
remove_chroot() {
    [ -e "$CHROOT" ] || return 0
    chroot_unmount
    local m
    while read -r m; do
        as_root umount -l "$m" || true
    done < <(findmnt -rn -o TARGET | grep -F "$CHROOT/" | sort -r)
    if findmnt -rn -o TARGET | grep -qF "$CHROOT/"; then
        die "$CHROOT still has something mounted inside; not deleting it"
    fi
    as_root rm -rf --one-file-system "$CHROOT"
}

# What the chroot sees of the host, at the same paths: kernel filesystems,
# the repository, and the Rust toolchain with its registry (read-write: cargo
# keeps its cache there).
CHROOT_CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}
CHROOT_RUSTUP_HOME=${RUSTUP_HOME:-$HOME/.rustup}
CHROOT_BINDS=(/proc /sys /dev /dev/pts "$REPO_ROOT" "$CHROOT_CARGO_HOME" "$CHROOT_RUSTUP_HOME")

chroot_mounts() {
    local d
    for d in "${CHROOT_BINDS[@]}"; do
        [ -d "$d" ] || continue
        as_root mkdir -p "$CHROOT$d"
        mountpoint -q "$CHROOT$d" || as_root mount --bind "$d" "$CHROOT$d"
    done
}

chroot_unmount() {
    local i
    for ((i = ${#CHROOT_BINDS[@]} - 1; i >= 0; i--)); do
        mountpoint -q "$CHROOT${CHROOT_BINDS[i]}" && as_root umount -l "$CHROOT${CHROOT_BINDS[i]}"
    done
    return 0
}

# The network settings the host uses: names, the CA bundle (with any local
# CA the site adds, say a TLS-inspecting proxy's), proxy variables.
chroot_network() {
    as_root cp /etc/resolv.conf "$CHROOT/etc/resolv.conf"
    if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
        # A fresh minbase system has no /etc/ssl/certs until its
        # ca-certificates package is in (which then rewrites the bundle:
        # hence the copy before every use).
        as_root mkdir -p "$CHROOT/etc/ssl/certs"
        as_root cp /etc/ssl/certs/ca-certificates.crt "$CHROOT/etc/ssl/certs/ca-certificates.crt"
    fi
    return 0
}

in_chroot() {
    ensure_chroot
    # An interrupted run must not leave the host's directories bound inside.
    [ "${CHROOT_KEEP_MOUNTS:-0}" = 1 ] || trap chroot_unmount EXIT
    chroot_mounts
    chroot_network
    local status=0
    as_root chroot "$CHROOT" /usr/bin/env -i \
        PATH="$CHROOT_CARGO_HOME/bin":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root CARGO_HOME="$CHROOT_CARGO_HOME" RUSTUP_HOME="$CHROOT_RUSTUP_HOME" \
        TERM="${TERM:-dumb}" LANG=C.UTF-8 \
        PGRX_HOME=/root/.pgrx-trixie CARGO_TARGET_DIR="$REPO_ROOT/target/trixie" \
        PG_MAJOR="${PG_MAJOR}" PG_SESSION_AUTH_IN_CHROOT=1 \
        ${http_proxy:+http_proxy=$http_proxy} ${https_proxy:+https_proxy=$https_proxy} \
        ${HTTP_PROXY:+HTTP_PROXY=$HTTP_PROXY} ${HTTPS_PROXY:+HTTPS_PROXY=$HTTPS_PROXY} \
        ${no_proxy:+no_proxy=$no_proxy} ${NO_PROXY:+NO_PROXY=$NO_PROXY} \
        bash -c 'cd "$1" && shift && "$@"' in_chroot "$REPO_ROOT" "$@" || status=$?
    # A server left running inside (the demo's) needs its mounts.
    [ "${CHROOT_KEEP_MOUNTS:-0}" = 1 ] || chroot_unmount
    return "$status"
}
