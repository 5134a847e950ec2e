"""moto's server, with the EC2/IAM calls blockwatch uses made to behave like AWS.

Run with the same arguments as `moto_server`. The patches reach into moto's
internals, so they are checked against the one pinned moto version.
"""

import copy
import sys

import moto

PINNED_MOTO = "5.2.5"  # tests/setup.sh installs this one
if moto.__version__ != PINNED_MOTO:
    sys.exit(
        f"tests/moto/serve.py: moto {moto.__version__} is installed, but its "
        f"patches are written for moto {PINNED_MOTO}: run tests/setup.sh"
    )

from moto.core.responses import ActionResult  # noqa: E402
from moto.ec2.exceptions import (  # noqa: E402
    InvalidLaunchTemplateVersionNotFound,
    InvalidSecurityGroupNotFoundError,
)
from moto.ec2.models.fleets import FleetsBackend  # noqa: E402
from moto.ec2.models.instances import InstanceBackend, MetadataOptions  # noqa: E402
from moto.ec2.models.launch_templates import (  # noqa: E402
    LaunchTemplate,
    LaunchTemplateBackend,
    LaunchTemplateVersion,
)
from moto.ec2.responses.launch_templates import LaunchTemplates  # noqa: E402
from moto.ec2.utils import parse_user_data  # noqa: E402
from moto.iam.access_control import IAMPolicy, PermissionResult  # noqa: E402
from moto.iam.exceptions import NotFoundException  # noqa: E402
from moto.iam.responses import IamResponse  # noqa: E402
from moto.server import main  # noqa: E402

# --- Launch template versions -------------------------------------------
# moto numbers versions by their place in `template.versions`. Deleting one
# must not renumber the others nor let its number come back, so versions are
# found by number and the highest number ever given is kept.


def create_version(self, data, description):
    number = max(getattr(self, "highest_version_number", 0), len(self.versions)) + 1
    self.highest_version_number = number
    version = LaunchTemplateVersion(self, number, data, description)
    self.versions.append(version)
    return version


def get_version(self, num):
    if str(num).lower() == "$latest":
        return self.versions[-1]
    if str(num).lower() == "$default":
        num = self.default_version_number
    for version in self.versions:
        if str(version.number) == str(num):
            return version
    raise InvalidLaunchTemplateVersionNotFound(template_id=self.id, version=num)


def default_version(self):
    return self.get_version(self.default_version_number)


original_describe_versions = LaunchTemplateBackend.describe_launch_template_versions


def describe_versions(
    self, template_name, template_id, versions, min_version, max_version, max_results
):
    """MinVersion/MaxVersion by number (moto slices by list position)."""
    if versions or not (min_version or max_version):
        return original_describe_versions(
            self, template_name, template_id, versions, min_version, max_version, max_results
        )
    every = original_describe_versions(
        self, template_name, template_id, [], None, None, sys.maxsize
    )
    wanted = [
        (template, version)
        for template, version in every
        if version.number >= (min_version or 0)
        and (not max_version or version.number <= max_version)
    ]
    return wanted[:max_results]


def launch_template(response):
    name = response._get_param("LaunchTemplateName")
    if name:
        return response.ec2_backend.get_launch_template_by_name(name)
    return response.ec2_backend.get_launch_template(
        response._get_param("LaunchTemplateId")
    )


def create_launch_template_version(self):
    """SourceVersion: AWS copies the source's parameters, then applies the
    top-level ones given (moto ignores SourceVersion). UserData is decoded as
    CreateLaunchTemplate does (moto keeps the raw string here)."""
    template = launch_template(self)
    data = self._get_param("LaunchTemplateData", {})
    if "UserData" in data:
        data["UserData"] = parse_user_data(data["UserData"])
    source = self._get_param("SourceVersion")
    self.error_on_dryrun()
    if source is not None:
        data = {**copy.deepcopy(template.get_version(source).data), **data}
    version = template.create_version(data, self._get_param("VersionDescription"))
    return ActionResult(
        {
            "LaunchTemplateVersion": {
                "CreateTime": version.create_time,
                "CreatedBy": f"arn:{self.partition}:iam::{self.current_account}:root",
                "DefaultVersion": template.is_default(version),
                "LaunchTemplateData": version.data,
                "LaunchTemplateId": template.id,
                "LaunchTemplateName": template.name,
                "VersionDescription": version.description,
                "VersionNumber": version.number,
            }
        }
    )


# Codes: the ResponseError type of the EC2 API reference, whose values are
# launchTemplate{Id,Name}{DoesNotExist,Malformed}, launchTemplateVersionDoesNotExist
# and unexpectedError. The reference gives no messages: these are ours.
DEFAULT_VERSION_ERROR = {
    "Code": "unexpectedError",
    "Message": "You cannot delete the default version of a launch template; "
    "you must first assign a different version as the default.",
}
UNKNOWN_VERSION_ERROR = {
    "Code": "launchTemplateVersionDoesNotExist",
    "Message": "The specified launch template version does not exist.",
}


def template_failure(response):
    """The per-version error for a template that does not exist, or None."""
    name = response._get_param("LaunchTemplateName")
    template_id = response._get_param("LaunchTemplateId")
    backend = response.ec2_backend
    if name and name not in backend.launch_template_name_to_ids:
        return {"LaunchTemplateName": name}, {
            "Code": "launchTemplateNameDoesNotExist",
            "Message": f"The specified launch template, with template name {name}, does not exist.",
        }
    if not name and template_id not in backend.launch_templates:
        return {"LaunchTemplateId": template_id}, {
            "Code": "launchTemplateIdDoesNotExist",
            "Message": f"The specified launch template, with template ID {template_id}, does not exist.",
        }
    return None


def delete_launch_template_versions(self):
    """Not in moto. Each requested version is deleted or reported failed
    with its ResponseError, the call itself succeeds."""
    self.error_on_dryrun()
    requested = self._get_param("Versions", [])
    missing_template = template_failure(self)
    template = None if missing_template else launch_template(self)
    deleted, failed = [], []
    for number in requested:
        number_field = {"VersionNumber": int(number)} if str(number).isdigit() else {}
        if missing_template:
            item, error = missing_template
            failed.append({**item, **number_field, "ResponseError": error})
            continue
        item = {"LaunchTemplateId": template.id, "LaunchTemplateName": template.name}
        version = next((v for v in template.versions if str(v.number) == str(number)), None)
        if version is None:
            failed.append({**item, **number_field, "ResponseError": UNKNOWN_VERSION_ERROR})
        elif template.is_default(version):
            failed.append({**item, **number_field, "ResponseError": DEFAULT_VERSION_ERROR})
        else:
            template.versions.remove(version)
            deleted.append({**item, **number_field})
    return ActionResult(
        {
            "SuccessfullyDeletedLaunchTemplateVersions": deleted,
            "UnsuccessfullyDeletedLaunchTemplateVersions": failed,
        }
    )


LaunchTemplate.create_version = create_version
LaunchTemplate.get_version = get_version
LaunchTemplate.default_version = default_version
LaunchTemplateBackend.describe_launch_template_versions = describe_versions
LaunchTemplates.create_launch_template_version = create_launch_template_version
LaunchTemplates.delete_launch_template_versions = delete_launch_template_versions

# --- Launches from a launch template ---------------------------------------
# AWS launches an instance with its launch template's data, unless the call
# itself sets a parameter. moto's RunInstances leaves out the template's
# metadata options, shutdown behaviour and profile, and its CreateFleet
# takes only the image, type, key, user data, subnet and tags, so instances
# came up with IMDSv1, "stop" on shutdown, no profile and the default
# security group. The rest is applied here.

original_run_instances = InstanceBackend.run_instances
original_create_fleet = FleetsBackend.create_fleet


def apply_template_data(backend, instance, data, given=()):
    """Applies `data` to a launched instance, except the fields in `given`."""
    if "MetadataOptions" in data and "MetadataOptions" not in given:
        instance.metadata_options = MetadataOptions(data["MetadataOptions"])
    if "InstanceInitiatedShutdownBehavior" in data and "InstanceInitiatedShutdownBehavior" not in given:
        instance.instance_initiated_shutdown_behavior = data[
            "InstanceInitiatedShutdownBehavior"
        ]
    profile = data.get("IamInstanceProfile") or {}
    if (profile.get("Arn") or profile.get("Name")) and "IamInstanceProfile" not in given:
        backend.associate_iam_instance_profile(
            instance_id=instance.id,
            iam_instance_profile_name=profile.get("Name"),
            iam_instance_profile_arn=profile.get("Arn"),
        )
    if data.get("SecurityGroupIds") and "SecurityGroupIds" not in given:
        groups = [backend.get_security_group_from_id(g) for g in data["SecurityGroupIds"]]
        if None in groups:
            raise InvalidSecurityGroupNotFoundError(data["SecurityGroupIds"])
        instance.security_groups = groups


def run_instances(self, image_id, count, user_data, security_group_names, **kwargs):
    reservation = original_run_instances(
        self, image_id, count, user_data, security_group_names, **kwargs
    )
    if kwargs.get("launch_template"):
        data = self._get_template_from_args(kwargs["launch_template"]).data
        given = {
            "MetadataOptions": kwargs.get("metadata_options"),
            "InstanceInitiatedShutdownBehavior": kwargs.get("instance_initiated_shutdown_behavior"),
            "IamInstanceProfile": kwargs.get("iam_instance_profile_name")
            or kwargs.get("iam_instance_profile_arn"),
            # moto already takes the template's groups when the call has none.
            "SecurityGroupIds": True,
        }
        for instance in reservation.instances:
            apply_template_data(self, instance, data, {k for k, v in given.items() if v})
    return reservation


def create_fleet(self, *args, **kwargs):
    fleet = original_create_fleet(self, *args, **kwargs)
    launched = [(item["instance"], item.get("launch_spec")) for item in fleet.on_demand_instances]
    launched += [(request.instance, request.launch_spec) for request in fleet.spot_requests]
    for instance, spec in launched:
        if spec is not None and spec.launch_template_spec:
            version = self._get_template_from_args(spec.launch_template_spec)
            apply_template_data(self, instance, version.data)
    return fleet


InstanceBackend.run_instances = run_instances
FleetsBackend.create_fleet = create_fleet

# --- iam:SimulatePrincipalPolicy -----------------------------------------
# Not in moto. Evaluated with moto's own policy evaluator: any Deny wins
# (explicitDeny); otherwise the identity policies must allow, and so must the
# permissions boundary when there is one (allowed); else implicitDeny.


def principal(backend, arn):
    for entity in [*backend.get_roles(), *backend.users.values()]:
        if entity.arn == arn:
            return entity
    raise NotFoundException(f"The principal {arn} cannot be found.")


def identity_policies(backend, entity):
    entities = [entity]
    if entity in backend.users.values():
        entities += backend.get_groups_for_user(entity.name)
    for holder in entities:
        yield from (IAMPolicy(document) for document in holder.policies.values())
        yield from (IAMPolicy(policy) for policy in holder.managed_policies.values())


def decision(action, resource, identity, boundary):
    results = [policy.is_action_permitted(action, resource) for policy in identity]
    bounded = [boundary.is_action_permitted(action, resource)] if boundary else []
    if PermissionResult.DENIED in results + bounded:
        return "explicitDeny"
    if PermissionResult.PERMITTED in results and all(
        r == PermissionResult.PERMITTED for r in bounded
    ):
        return "allowed"
    return "implicitDeny"


def simulate_principal_policy(self):
    entity = principal(self.backend, self._get_param("PolicySourceArn"))
    identity = list(identity_policies(self.backend, entity))
    boundary_arn = getattr(entity, "permissions_boundary_arn", None)
    boundary = IAMPolicy(self.backend.get_policy(boundary_arn)) if boundary_arn else None
    results = [
        {
            "EvalActionName": action,
            "EvalResourceName": resource,
            "EvalDecision": decision(action, resource, identity, boundary),
        }
        for action in self._get_param("ActionNames", [])
        for resource in self._get_param("ResourceArns") or ["*"]
    ]
    return ActionResult({"EvaluationResults": results, "IsTruncated": False})


IamResponse.simulate_principal_policy = simulate_principal_policy

if __name__ == "__main__":
    sys.exit(main())
