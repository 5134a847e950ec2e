#!/usr/bin/env bash
# Installs everything the tests and the local demo need on a clean machine,
# from the package registries only. Safe to run again: each step is skipped
# when its result is already there.
#
#   tests/setup.sh               the pinned toolchain and all the tests and
#                                the demo need, but cargo-deny
#   tests/setup.sh --cargo-deny  the pinned toolchain and cargo-deny, which
#                                only the test command's dependency check
#                                needs (tests/run-tests builds it in the
#                                background, beside the code)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
case "${1:-}" in
    "") want_deny=no ;;
    --cargo-deny) want_deny=yes ;;
    *)
        echo "usage: tests/setup.sh [--cargo-deny]" >&2
        exit 2
        ;;
esac
venv="${BLOCKWATCH_MOTO_VENV:-$repo/.venv}"
# Pinned so a release cannot change the emulator or the linter under the tests.
moto_spec='moto[server]==5.2.5'
cfn_lint_spec='cfn-lint==1.58.0'
hcl2_spec='python-hcl2==8.1.4'

log() { printf 'setup: %s\n' "$*" >&2; }

if ! command -v cargo >/dev/null 2>&1; then
    log "cargo not found: install the Rust toolchain (rustup) first"
    exit 1
fi

# The toolchain rust-toolchain.toml pins. The machine's one Rust is rustup's
# `stable`: when that is the pinned version, the pinned name is made to
# point at it, so that no cargo call below tries to download a toolchain.
# A symlink, as `rustup toolchain link` refuses release names like 1.95.0.
# Otherwise rustup installs the pinned one (and fails loudly where it can't).
# rustup is asked from outside the repo and with auto-install off: inside,
# even `rustup toolchain list` installs the pinned toolchain when it can.
toolchain="$(sed -n 's/^channel *= *"\([^"]*\)".*/\1/p' "$repo/rust-toolchain.toml")"
rustup_outside() { (cd / && RUSTUP_AUTO_INSTALL=0 rustup "$@"); }
if command -v rustup >/dev/null 2>&1 && ! rustup_outside toolchain list | grep -q "^$toolchain-"; then
    stable="$(rustup_outside toolchain list | sed -n 's/^\(stable-[^ ]*\).*/\1/p')"
    if [[ -n "$stable" && "$(rustup_outside run "$stable" rustc --version)" == "rustc $toolchain "* ]]; then
        log "Rust $toolchain (rust-toolchain.toml) is the installed $stable: naming it so"
        ln -s "$stable" "$(rustup_outside show home)/toolchains/$toolchain-${stable#stable-}"
    else
        log "installing Rust $toolchain (rust-toolchain.toml)"
        rustup_outside toolchain install "$toolchain" --profile minimal --component rustfmt,clippy
    fi
fi
if [[ "$(cd "$repo" && rustc --version)" != "rustc $toolchain "* ]]; then
    log "rustc in $repo is not $toolchain (rust-toolchain.toml): $(cd "$repo" && rustc --version)"
    exit 1
fi

# Pinned: deny.toml's format follows cargo-deny's releases. Built with
# --debug (half the compile time; the checks take well under a second).
deny_version=0.20.2
if [[ "$want_deny" == yes ]]; then
    if [[ "$(cargo deny --version 2>/dev/null)" != "cargo-deny $deny_version" ]]; then
        log "installing cargo-deny $deny_version"
        cargo install --locked --debug --version "$deny_version" cargo-deny
    fi
    exit 0
fi

python="${PYTHON:-python3}"
if ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    log "python3 lacks venv/ensurepip; installing python3-venv with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
    python=python3
fi

if [[ ! -x "$venv/bin/moto_server" ]] || ! "$venv/bin/python" -c 'import moto, flask' >/dev/null 2>&1; then
    log "creating $venv with $moto_spec"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$moto_spec"
fi
log "moto server: $venv/bin/moto_server ($("$venv/bin/python" -c 'import moto; print(moto.__version__)'))"
if [[ "$("$venv/bin/cfn-lint" --version 2>/dev/null)" != "cfn-lint ${cfn_lint_spec#cfn-lint==}" ]]; then
    log "installing $cfn_lint_spec"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$cfn_lint_spec"
fi

if ! "$venv/bin/python" -c 'import hcl2' >/dev/null 2>&1; then
    log "installing $hcl2_spec"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$hcl2_spec"
fi

# Debian packages: shellcheck for the scripts; debootstrap, systemd-nspawn and
# rpm for the package tests; dockerd and a static busybox for the container
# tests, which start their own private dockerd (tests/src/docker.rs).
missing=()
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
command -v systemd-nspawn >/dev/null 2>&1 || missing+=(systemd-container)
command -v rpm >/dev/null 2>&1 || missing+=(rpm)
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
# The test image holds busybox alone, so it must be the static one (Debian's
# `busybox` package, which busybox-static replaces, is dynamically linked).
[[ -x /bin/busybox ]] && ! ldd /bin/busybox >/dev/null 2>&1 || missing+=(busybox-static)
if ((${#missing[@]})); then
    log "installing ${missing[*]} with apt-get"
    # docker.io's maintainer scripts would start the host's Docker service:
    # a policy-rc.d that denies every start keeps them from it (the usual
    # one in container images). Only ours is removed again.
    policy=/usr/sbin/policy-rc.d
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\n# tests/setup.sh: no service starts while it installs packages\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        trap 'rm -f "$policy"' EXIT
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Pinned for reproducible runs; built with --debug, which compiles in about
# half the time and runs the tests just as well. A nextest already installed
# (another version) is used as it is.
nextest_version=0.9.143
if ! found="$(cargo nextest --version 2>/dev/null | head -n1)"; then
    log "installing cargo-nextest $nextest_version"
    cargo install --locked --debug --version "$nextest_version" cargo-nextest
elif [[ "$found" != "cargo-nextest $nextest_version"* ]]; then
    log "using the installed $found (the pinned version is $nextest_version)"
fi
