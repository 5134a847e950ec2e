# shellcheck shell=sh
# blockwatch (rpm %postun): reload units after erase or upgrade.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
