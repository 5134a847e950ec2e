#!/bin/sh
# Leaves the image without any instance's identity, in the spirit of
# amazon-ecs-ami's cleanup: an image must never carry a cluster.
set -eu
systemctl stop ecs.service blockwatch.service 2>/dev/null || true
# The ECS agent's checkpoint names a cluster; a new instance must not inherit it.
rm -rf /var/lib/ecs/data/*
if [ -f /etc/ecs/ecs.config ]; then
    sed -i '/^[[:space:]]*ECS_CLUSTER[[:space:]]*=/d' /etc/ecs/ecs.config
fi
# blockwatch's own state belongs to the build instance.
rm -rf /var/lib/blockwatch/*
# A fresh machine-id and cloud-init run on first boot.
truncate -s 0 /etc/machine-id
rm -f /var/lib/dbus/machine-id
cloud-init clean --logs --seed 2>/dev/null || rm -rf /var/lib/cloud/instances /var/lib/cloud/instance
rm -rf /tmp/* /var/tmp/*
