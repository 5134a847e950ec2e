#!/bin/bash
# For stock ECS-optimized AMIs without blockwatch (blockwatch-launch --user-data-mode ecs-config):
# names the compute environment's ECS cluster before ecs.service starts.
echo "ECS_CLUSTER={{cluster}}" >> /etc/ecs/ecs.config
