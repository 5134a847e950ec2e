# shellcheck shell=sh
# blockwatch (rpm %preun): $1 is 0 on erase. Stop the daemon and disable both
# units; the finished join is not stopped, since ecs.service requires it.
if [ "$1" -eq 0 ]; then
    if [ -d /run/systemd/system ]; then
        systemctl stop blockwatch.service >/dev/null 2>&1 || :
    fi
    systemctl --no-reload disable blockwatch.service blockwatch-join.service >/dev/null 2>&1 || :
fi
