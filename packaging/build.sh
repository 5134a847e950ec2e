#!/usr/bin/env bash
# Builds the agent's .deb and .rpm from the metadata in agent/Cargo.toml.
#
#   packaging/build.sh                 release packages (LTO, stripped) in target/packages/
#   packaging/build.sh --profile dev   test packages in target/packages-test/: the same
#                                      metadata and files around the debug binary (stripped),
#                                      which the test command has already built
#
# Both write the man pages with blockwatch-mangen (built in the same cargo
# step): blockwatch(8) and blockwatch.toml(5) go into the packages, and
# blockwatch-launch(1), whose command the package does not hold, beside them.
#
# Installs pinned cargo-deb and cargo-generate-rpm when they are missing or
# another version.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

# Pinned: these tools shape the packages. Built with --debug: they only copy
# and compress a few files, and their debug builds take half the CPU time of
# release ones (measured on 2 cores: 3.5 min against 6.7 min for the two).
cargo_deb_version=3.8.0
cargo_generate_rpm_version=0.21.1

log() { printf 'build: %s\n' "$*" >&2; }
usage() { sed -n '2,10s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2; }

profile=release
while (($#)); do
    case "$1" in
        --profile) profile="${2:?--profile needs a value, e.g. dev}"; shift 2 ;;
        --profile=*) profile="${1#--profile=}"; shift ;;
        -h | --help) usage; exit 0 ;;
        *) log "unknown argument $1"; usage; exit 64 ;;
    esac
done

# `cargo install` the pinned version when `cargo <subcommand>` is missing or another version.
ensure_tool() {
    local crate="$1" version="$2" subcommand="$3" found
    found="$(cargo "$subcommand" --version 2>/dev/null || true)"
    if [[ "$found" != "$crate $version" ]]; then
        log "installing $crate $version${found:+ (found: $found)}"
        cargo install --locked --debug --version "$version" "$crate"
    fi
}
ensure_tool cargo-deb "$cargo_deb_version" deb
ensure_tool cargo-generate-rpm "$cargo_generate_rpm_version" generate-rpm

# Renders the pages into $2/man with the generator in $1, gzipped as Debian
# policy asks (-9n: no name or time stamp, so a rebuild is identical), and
# moves the launcher's page to $3.
man_pages() {
    local generator="$1" man="$2/man" beside="$3"
    rm -rf "$man"
    "$generator" "$man"
    gzip -9n "$man"/*
    mv "$man/blockwatch-launch.1.gz" "$beside/"
}

if [[ "$profile" == release ]]; then
    out="$repo/target/packages"
    mkdir -p "$out"
    # Stripped, LTO, panic=abort: see [profile.release].
    cargo build --release --locked -p blockwatch -p blockwatch-mangen
    man_pages "${CARGO_TARGET_DIR:-$repo/target}/release/blockwatch-mangen" "${CARGO_TARGET_DIR:-$repo/target}/release" "$out"
    cargo deb --no-build --package blockwatch --output "$out/"
    cargo generate-rpm --package agent --output "$out/"
else
    # A test package never sits beside a release one.
    out="$repo/target/packages-test"
    rm -rf "$out"
    mkdir -p "$out"
    cargo build --profile "$profile" --locked -p blockwatch -p blockwatch-mangen
    # Where cargo put it: CARGO_TARGET_DIR when set (CI may point it elsewhere).
    target_dir="${CARGO_TARGET_DIR:-$repo/target}"
    case "$profile" in dev | test) built="$target_dir/debug" ;; *) built="$target_dir/$profile" ;; esac
    # The metadata names target/release/blockwatch, and cargo-deb refuses the
    # dev profile: stage the binary, stripped as a release one is, as
    # <stage>/release/blockwatch, and point both tools' target dir there.
    stage="$out/stage"
    mkdir -p "$stage/release"
    strip -o "$stage/release/blockwatch" "$built/blockwatch"
    man_pages "$built/blockwatch-mangen" "$stage/release" "$out"
    # Faster compression than a release package: these are unpacked once, locally.
    CARGO_TARGET_DIR="$stage" cargo deb --no-build --fast --package blockwatch --output "$out/"
    CARGO_TARGET_DIR="$stage" cargo generate-rpm --payload-compress gzip --package agent --output "$out/"
    rm -rf "$stage"
fi
ls -1 "$out"
