# shellcheck shell=sh
# blockwatch (rpm %post): $1 is 1 on install, 2 on upgrade. Enable through the
# presets on install without starting (image builds); restart on upgrade.
if [ "$1" -eq 1 ]; then
    systemctl --no-reload preset blockwatch-join.service blockwatch.service >/dev/null 2>&1 || :
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 2 ]; then
        systemctl try-restart blockwatch.service >/dev/null 2>&1 || :
    fi
fi
