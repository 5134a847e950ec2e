"""Offline checks of ami/blockwatch.pkr.hcl: it parses as HCL2 and bakes what the README promises.

Debian's packer (1.6) predates `required_plugins`, so a Python HCL2 parser does the syntax check.
"""
import pathlib
import sys

import hcl2

template = pathlib.Path(__file__).with_name("blockwatch.pkr.hcl")
with template.open() as handle:
    parsed = hcl2.load(handle)


def fail(message):
    print(f"check_template: {template}: {message}", file=sys.stderr)
    sys.exit(1)


def unquote(value):
    return value.strip('"') if isinstance(value, str) else value


sources = [s for block in parsed.get("source", []) for s in block.get('"amazon-ebs"', block.get("amazon-ebs", {})).values()]
if len(sources) != 1:
    fail(f"expected one amazon-ebs source, found {len(sources)}")
source = sources[0]
if "/aws/service/ecs/optimized-ami/amazon-linux-2023/recommended/image_id" not in unquote(source.get("source_ami", "")):
    fail("source_ami must resolve the ECS-optimized AL2023 SSM parameter")
metadata = source.get("metadata_options", [{}])[0]
if unquote(metadata.get("http_tokens")) != "required":
    fail("metadata_options.http_tokens must be required (IMDSv2)")
if int(metadata.get("http_put_response_hop_limit", 0)) != 1:
    fail("metadata_options.http_put_response_hop_limit must be 1 (2 lets bridge-mode containers reach IMDS)")
build = parsed.get("build", [{}])[0]
scripts = [unquote(s) for p in build.get("provisioner", []) for s in p.get('"shell"', p.get("shell", {})).get("scripts", [])]
for needed in ("install.sh", "cleanup.sh"):
    if not any(s.endswith(needed) for s in scripts):
        fail(f"the shell provisioner must run {needed}")
    if not template.with_name(needed).exists():
        fail(f"{needed} is missing")
print(f"check_template: {template.name}: ok")
