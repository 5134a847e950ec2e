#!/usr/bin/env bash
# A minimal Debian bookworm root with systemd, for the package tests under
# systemd-nspawn. Cached in target/nspawn/bookworm between runs.
# ca-certificates: every real AMI has a CA bundle, and the test package's
# debug binary asserts (debug_assert in the AWS SDK's TLS setup) that it
# finds one.
# man-db: the package test asks `man -w` where the shipped pages are.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
root="$repo/target/nspawn/bookworm"
if [[ -x "$root/usr/lib/systemd/systemd" && -s "$root/etc/ssl/certs/ca-certificates.crt" && -x "$root/usr/bin/man" ]]; then
    exit 0
fi
mkdir -p "$repo/target/nspawn"
rm -rf "$root.partial" "$root"
echo "nspawn-base: debootstrap bookworm into $root" >&2
debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,ca-certificates,man-db bookworm "$root.partial" http://deb.debian.org/debian >&2
mv "$root.partial" "$root"
