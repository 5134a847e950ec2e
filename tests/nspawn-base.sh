#!/usr/bin/env bash
# A minimal Debian bookworm root with systemd, for the package tests under
# systemd-nspawn. Cached in target/nspawn/bookworm between runs.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
root="$repo/target/nspawn/bookworm"
if [[ -x "$root/usr/lib/systemd/systemd" ]]; then
    exit 0
fi
mkdir -p "$repo/target/nspawn"
rm -rf "$root.partial"
echo "nspawn-base: debootstrap bookworm into $root" >&2
debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus bookworm "$root.partial" http://deb.debian.org/debian >&2
mv "$root.partial" "$root"
