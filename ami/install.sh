#!/bin/sh
# Installs the blockwatch package on the image being baked, with dnf/rpm or
# apt/dpkg, whichever the image has. Enables the units (presets); starts nothing.
set -eu
package="${BLOCKWATCH_PACKAGE:?set BLOCKWATCH_PACKAGE to the .rpm or .deb}"
if command -v dnf >/dev/null 2>&1; then
    dnf install -y "$package"
elif command -v rpm >/dev/null 2>&1 && [ "${package##*.}" = rpm ]; then
    rpm -Uvh "$package"
elif command -v apt-get >/dev/null 2>&1; then
    apt-get install -y "$package"
elif command -v dpkg >/dev/null 2>&1; then
    dpkg -i "$package"
else
    echo "install.sh: no dnf, rpm, apt-get or dpkg here" >&2
    exit 1
fi
systemctl is-enabled blockwatch-join.service blockwatch.service
# time-sync.target means "synchronised" only with a waiter enabled: then
# blockwatch.service (After=time-sync.target) starts on a synchronised clock
# and never judges a lease by an RTC that NTP is about to step. AL2023 ships
# chrony-wait.service, disabled.
for waiter in chrony-wait.service systemd-time-wait-sync.service; do
    if systemctl cat "$waiter" >/dev/null 2>&1; then
        systemctl enable "$waiter"
        break
    fi
done
