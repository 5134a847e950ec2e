#!/usr/bin/env bash
# Builds the release binary once and writes the .deb and .rpm of the agent
# into target/packages/. Installs cargo-deb and cargo-generate-rpm if missing.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

log() { printf 'build: %s\n' "$*" >&2; }

if ! cargo deb --version >/dev/null 2>&1; then
    log "installing cargo-deb"
    cargo install --locked cargo-deb
fi
if ! cargo generate-rpm --version >/dev/null 2>&1; then
    log "installing cargo-generate-rpm"
    cargo install --locked cargo-generate-rpm
fi

out="$repo/target/packages"
mkdir -p "$out"
# Stripped, LTO, panic=abort: see [profile.release].
cargo build --release --locked -p blockwatch
cargo deb --no-build --package blockwatch --output "$out/"
cargo generate-rpm --package agent --output "$out/"
ls -1 "$out"
