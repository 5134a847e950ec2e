//! The IAM policies match the code: the agent's policy allows exactly the
//! calls the agent makes, the launcher's covers the launcher's, and the
//! CloudFormation quickstart carries the same documents; its job definition
//! mounts the deadline files read-only.
//!
//! Over 400 lines: one check per policy document and per call the code makes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `"service:Action"` string literal in the Rust files under `dir`.
fn api_calls_in(dir: &Path) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for literal in text.split('"').skip(1).step_by(2) {
                    let is_call = literal.split_once(':').is_some_and(|(service, action)| {
                        ["batch", "ec2", "ecs", "ssm", "iam", "autoscaling"].contains(&service)
                            && action.starts_with(|c: char| c.is_ascii_uppercase())
                            && action.chars().all(|c| c.is_ascii_alphanumeric())
                    });
                    if is_call {
                        found.insert(literal.to_owned());
                    }
                }
            }
        }
    }
    found
}

fn statements_in_json(path: &Path) -> Vec<serde_json::Value> {
    let policy: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    policy["Statement"].as_array().unwrap().clone()
}

/// A statement's `key` (`Action` or `Resource`): one string or a list.
fn strings_of(statement: &serde_json::Value, key: &str) -> Vec<String> {
    match &statement[key] {
        serde_json::Value::String(one) => vec![one.clone()],
        serde_json::Value::Array(list) => list
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect(),
        other => panic!("unexpected {key} {other}"),
    }
}

/// The ECS ones among `actions`, in their order.
fn ecs_actions(actions: impl IntoIterator<Item = String>) -> Vec<String> {
    actions
        .into_iter()
        .filter(|a| a.starts_with("ecs:"))
        .collect()
}

fn actions_of(statement: &serde_json::Value) -> Vec<String> {
    strings_of(statement, "Action")
}

/// What the policy allows (its Deny guards are checked apart).
fn actions_in_json(path: &Path) -> BTreeSet<String> {
    let mut actions = BTreeSet::new();
    for statement in statements_in_json(path) {
        match statement["Effect"].as_str() {
            Some("Allow") => actions.extend(actions_of(&statement)),
            Some("Deny") => {}
            other => panic!("unexpected Effect {other:?}"),
        }
    }
    actions
}

/// The statements of the quickstart between `from` and `to`, as text blocks
/// each starting at its `- Sid:` line.
fn statements_in_template(from: &str, to: &str) -> Vec<String> {
    let text =
        std::fs::read_to_string(repo().join("bootstrap/cloudformation/quickstart.yaml")).unwrap();
    let start = text
        .find(from)
        .unwrap_or_else(|| panic!("{from} not in the template"));
    let end = start
        + text[start..]
            .find(to)
            .unwrap_or_else(|| panic!("{to} not after {from}"));
    let mut blocks: Vec<String> = Vec::new();
    for line in text[start..end].lines() {
        if line.trim_start().starts_with("- Sid:") {
            blocks.push(String::new());
        }
        if let Some(block) = blocks.last_mut() {
            block.push_str(line);
            block.push('\n');
        }
    }
    blocks
}

fn actions_in_block(block: &str) -> BTreeSet<String> {
    block
        .lines()
        .map(str::trim)
        .filter_map(|line| {
            line.strip_prefix("Action:")
                .or_else(|| line.strip_prefix("- "))
                .map(str::trim)
        })
        .filter(|a| {
            a.contains(':')
                && !a.contains(' ')
                && !a.starts_with("arn")
                && !a.starts_with('!')
                && !a.starts_with("Sid:")
        })
        .map(str::to_owned)
        .collect()
}

/// The actions the quickstart allows between `from` and `to`.
fn actions_in_template(from: &str, to: &str) -> BTreeSet<String> {
    statements_in_template(from, to)
        .iter()
        .filter(|block| !block.contains("Effect: Deny"))
        .flat_map(|block| actions_in_block(block))
        .collect()
}

#[test]
fn agent_policy_allows_exactly_the_calls_the_agent_makes() {
    // The agent's own code and the AWS glue it shares with the launcher.
    let mut calls = api_calls_in(&repo().join("agent/src"));
    calls.extend(api_calls_in(&repo().join("agent/aws/src")));
    let policy = actions_in_json(&repo().join("bootstrap/iam/agent-policy.json"));
    assert!(
        calls.contains("ecs:UpdateContainerInstancesState")
            && calls.contains("batch:DescribeComputeEnvironments"),
        "{calls:?}"
    );
    assert_eq!(policy, calls, "agent-policy.json vs the agent's API calls");
    assert_eq!(
        actions_in_template("PolicyName: blockwatch-agent", "InstanceProfile:"),
        policy,
        "quickstart vs agent-policy.json"
    );
}

#[test]
fn launcher_policy_covers_the_launchers_calls() {
    let mut calls = api_calls_in(&repo().join("bootstrap/src"));
    // Through the shared compute environment lookup (blockwatch-aws).
    calls.insert("batch:DescribeComputeEnvironments".to_owned());
    // Asked of IAM's policy simulator for a template's instance role, never called.
    calls.remove("ec2:DescribeTags");
    // Named in a warning's text, which the scan does not see.
    calls.insert("ec2:DeleteLaunchTemplateVersions".to_owned());
    let policy = actions_in_json(&repo().join("bootstrap/iam/launcher-policy.json"));
    let missing: Vec<_> = calls.difference(&policy).collect();
    assert!(missing.is_empty(), "launcher-policy.json lacks {missing:?}");
    // Tags at launch and passing the instance role need these too.
    for extra in ["ec2:CreateTags", "iam:PassRole"] {
        assert!(policy.contains(extra), "{extra}");
    }
    assert_eq!(
        actions_in_template("LauncherPolicy:", "Outputs:"),
        policy,
        "quickstart vs launcher-policy.json"
    );
}

#[test]
fn the_quickstart_retries_host_deaths_and_blockwatch_stops_then_exits() {
    let text =
        std::fs::read_to_string(repo().join("bootstrap/cloudformation/quickstart.yaml")).unwrap();
    let retry = &text[text.find("EvaluateOnExit:").unwrap()..];
    let host = retry.find("OnStatusReason: \"Host EC2*\"").unwrap();
    let ours = retry
        .find(&format!(
            "OnStatusReason: \"{}*\"",
            blockwatch_core::decision::STOP_REASON_PREFIX
        ))
        .unwrap();
    let exit = retry.find("OnReason: \"*\"").unwrap();
    assert!(
        host < exit && ours < exit,
        "RETRY rules come before the catch-all EXIT"
    );
    assert!(text.contains("Type: UNMANAGED"));
}

/// The ECS actions that change another team's work: drain its instances, stop its jobs.
const ECS_WRITES: [&str; 2] = ["ecs:UpdateContainerInstancesState", "ecs:StopTask"];
/// The compute environment's cluster, as the policy file shows it (a placeholder to replace).
const CLUSTER_PLACEHOLDER: &str = "arn:aws:ecs:*:*:cluster/COMPUTE_ENVIRONMENT_Batch_*";
/// The same in the quickstart, for the compute environment it creates.
const CLUSTER_IN_QUICKSTART: &str = "ecs:cluster: !Sub \"arn:${AWS::Partition}:ecs:${AWS::Region}:${AWS::AccountId}:cluster/${EnvironmentName}-unmanaged_Batch_*\"";

/// The cluster's container instances and tasks, as the policy file shows them.
const CONTAINER_INSTANCES_PLACEHOLDER: &str =
    "arn:aws:ecs:*:*:container-instance/COMPUTE_ENVIRONMENT_Batch_*/*";
const TASKS_PLACEHOLDER: &str = "arn:aws:ecs:*:*:task/COMPUTE_ENVIRONMENT_Batch_*/*";

#[test]
fn agent_policy_scopes_every_ecs_call_to_the_compute_environments_cluster() {
    let statements = statements_in_json(&repo().join("bootstrap/iam/agent-policy.json"));
    let allows = |action: &str| {
        statements
            .iter()
            .filter(|s| s["Effect"] == "Allow" && actions_of(s).iter().any(|a| a == action))
            .collect::<Vec<_>>()
    };
    for write in ECS_WRITES {
        assert!(!allows(write).is_empty(), "{write} not allowed at all");
    }
    // Every ECS call, write or read, only on the compute environment's
    // cluster: ListContainerInstances takes the cluster as its resource; the
    // others name the cluster's container-instance or task ARNs and carry the
    // ecs:cluster condition on top.
    for statement in statements.iter().filter(|s| s["Effect"] == "Allow") {
        let ecs = ecs_actions(actions_of(statement));
        if ecs.is_empty() {
            continue;
        }
        let on_cluster_arns = (statement["Resource"] == CONTAINER_INSTANCES_PLACEHOLDER
            || statement["Resource"] == TASKS_PLACEHOLDER)
            && statement["Condition"]["ArnLike"]["ecs:cluster"] == CLUSTER_PLACEHOLDER;
        let by_resource =
            statement["Resource"] == CLUSTER_PLACEHOLDER && statement["Condition"].is_null();
        assert!(
            on_cluster_arns || by_resource,
            "{ecs:?} not scoped to the cluster: {statement}"
        );
        if by_resource {
            assert_eq!(ecs, ["ecs:ListContainerInstances"], "{statement}");
        }
    }
    // AmazonEC2ContainerServiceforEC2Role, which the ECS agent needs, allows
    // UpdateContainerInstancesState on every cluster: a Deny caps it.
    let guard = statements
        .iter()
        .find(|s| s["Effect"] == "Deny")
        .expect("a Deny for the ECS writes outside the cluster");
    let denied = actions_of(guard);
    for write in ECS_WRITES {
        assert!(denied.iter().any(|a| a == write), "{write} not capped");
    }
    assert_eq!(guard["Resource"], "*");
    assert_eq!(
        guard["Condition"]["ArnNotLike"]["ecs:cluster"],
        CLUSTER_PLACEHOLDER
    );

    // The quickstart: the same statements, for the compute environment it makes.
    let blocks = statements_in_template("PolicyName: blockwatch-agent", "InstanceProfile:");
    let in_cluster = |kind: &str| {
        format!(
            "Resource: !Sub \"arn:${{AWS::Partition}}:ecs:${{AWS::Region}}:${{AWS::AccountId}}:{kind}/${{EnvironmentName}}-unmanaged_Batch_*/*\""
        )
    };
    for block in &blocks {
        let ecs = ecs_actions(actions_in_block(block));
        if ecs.is_empty() {
            continue;
        }
        let lines: Vec<&str> = block.lines().map(str::trim).collect();
        let deny = lines.contains(&"Effect: Deny");
        let conditioned = lines.contains(&CLUSTER_IN_QUICKSTART)
            && lines.contains(if deny { &"ArnNotLike:" } else { &"ArnLike:" });
        let on_cluster_arns = lines.contains(&in_cluster("container-instance").as_str())
            || lines.contains(&in_cluster("task").as_str());
        let by_resource = ecs == ["ecs:ListContainerInstances"]
            && lines.iter().any(|l| {
                l.starts_with("Resource: !Sub")
                    && l.ends_with(":cluster/${EnvironmentName}-unmanaged_Batch_*\"")
            });
        if deny {
            assert!(conditioned && lines.contains(&"Resource: \"*\""), "{block}");
        } else {
            assert!(
                (conditioned && on_cluster_arns) || by_resource,
                "not scoped:\n{block}"
            );
        }
    }
    let deny = blocks
        .iter()
        .find(|b| b.contains("Effect: Deny"))
        .expect("the quickstart caps the managed policy too");
    for write in ECS_WRITES {
        assert!(actions_in_block(deny).contains(write), "{deny}");
    }
}

/// The resource types the Service Authorization Reference lists for each
/// action blockwatch adds (only those the policies use, for the actions that
/// have more). Empty: the action supports no resource-level permissions and
/// takes `"*"` only. Sources: the "Actions defined by ..." tables of
/// list_amazonec2, list_amazonelasticcontainerservice, list_awsbatch,
/// list_awssystemsmanager and list_awsidentityandaccessmanagementiam.
const RESOURCE_TYPES: [(&str, &[&str]); 30] = [
    ("batch:DescribeComputeEnvironments", &[]),
    ("ec2:DescribeTags", &[]),
    ("ec2:DescribeInstances", &[]),
    ("ec2:DescribeSpotInstanceRequests", &[]),
    ("ec2:DescribeCapacityReservations", &[]),
    ("ec2:DescribeInstanceAttribute", &["instance"]),
    (
        "ec2:RunInstances",
        &[
            "instance",
            "image",
            "subnet",
            "security-group",
            "network-interface",
            "volume",
            "key-pair",
            "spot-instances-request",
            "capacity-reservation",
            "launch-template",
        ],
    ),
    ("ec2:DescribeLaunchTemplates", &[]),
    // The fleet's own row lists only `fleet` as required; EC2 still checks
    // the others a launch involves (a denial on `launch-template/*` is seen
    // in practice).
    (
        "ec2:CreateFleet",
        &[
            "fleet",
            "image",
            "instance",
            "key-pair",
            "launch-template",
            "network-interface",
            "placement-group",
            "security-group",
            "snapshot",
            "subnet",
            "volume",
        ],
    ),
    ("ec2:CreateLaunchTemplate", &["launch-template"]),
    ("ec2:DeleteLaunchTemplate", &["launch-template"]),
    ("ec2:CreateTags", &["instance", "volume", "launch-template"]),
    ("ec2:DeleteTags", &["instance"]),
    ("ecs:ListContainerInstances", &["cluster"]),
    ("ecs:DescribeContainerInstances", &["container-instance"]),
    ("ecs:UpdateContainerInstancesState", &["container-instance"]),
    ("ecs:ListTasks", &["container-instance"]),
    ("ecs:DescribeTasks", &["task"]),
    ("ecs:StopTask", &["task"]),
    ("ssm:GetParameter", &["parameter"]),
    ("autoscaling:DescribeAutoScalingInstances", &[]),
    ("autoscaling:DescribeLifecycleHooks", &[]),
    (
        "autoscaling:RecordLifecycleActionHeartbeat",
        &["autoScalingGroup"],
    ),
    ("autoscaling:CompleteLifecycleAction", &["autoScalingGroup"]),
    ("iam:PassRole", &["role"]),
    ("ec2:DescribeLaunchTemplateVersions", &[]),
    ("ec2:CreateLaunchTemplateVersion", &["launch-template"]),
    ("ec2:DeleteLaunchTemplateVersions", &["launch-template"]),
    ("iam:GetInstanceProfile", &["instance-profile"]),
    ("iam:SimulatePrincipalPolicy", &["group", "role", "user"]),
];

fn resource_types_of(action: &str) -> &'static [&'static str] {
    RESOURCE_TYPES
        .iter()
        .find(|(a, _)| *a == action)
        .map(|(_, types)| *types)
        .unwrap_or_else(|| {
            panic!("{action}: look up its resource types in the Service Authorization Reference and add it to RESOURCE_TYPES")
        })
}

fn resources_of(statement: &serde_json::Value) -> Vec<String> {
    strings_of(statement, "Resource")
}

/// `instance` in `arn:aws:ec2:*:*:instance/*`, `autoScalingGroup` in
/// `arn:aws:autoscaling:*:*:autoScalingGroup:*:autoScalingGroupName/*`.
fn resource_type_in(arn: &str) -> &str {
    let resource = arn.splitn(6, ':').nth(5).unwrap_or("");
    resource.split(['/', ':']).next().unwrap_or("")
}

/// Both policy files and both policies of the quickstart.
const POLICY_FILES: [&str; 2] = [
    "bootstrap/iam/agent-policy.json",
    "bootstrap/iam/launcher-policy.json",
];
const TEMPLATE_POLICIES: [(&str, &str); 2] = [
    ("PolicyName: blockwatch-agent", "InstanceProfile:"),
    ("LauncherPolicy:", "Outputs:"),
];

/// A job on the instance holds the instance role: whatever can be scoped is.
#[test]
fn no_action_that_takes_resource_arns_is_allowed_on_star() {
    for file in POLICY_FILES {
        for statement in statements_in_json(&repo().join(file)) {
            if statement["Effect"] != "Allow" {
                continue;
            }
            let resources = resources_of(&statement);
            for action in actions_of(&statement) {
                let types = resource_types_of(&action);
                if types.is_empty() {
                    assert_eq!(resources, ["*"], "{file}: {statement}");
                    continue;
                }
                for arn in &resources {
                    assert!(
                        types.contains(&resource_type_in(arn)),
                        "{file}: {action} on {arn:?}, not one of its resource types {types:?}"
                    );
                }
            }
        }
    }
    for (from, to) in TEMPLATE_POLICIES {
        for block in statements_in_template(from, to) {
            if block.contains("Effect: Deny") {
                continue;
            }
            let on_star = block.lines().any(|l| l.trim() == "Resource: \"*\"");
            for action in actions_in_block(&block) {
                if !resource_types_of(&action).is_empty() {
                    assert!(!on_star, "quickstart: {action} on *:\n{block}");
                }
            }
        }
    }
}

/// The trimmed lines nested under the first line of `block` that reads
/// `key` (trimmed), up to the next line indented no deeper than it.
fn nested_under(block: &str, key: &str) -> Vec<String> {
    let mut lines = block.lines().skip_while(|l| l.trim() != key);
    let Some(head) = lines.next() else {
        return Vec::new();
    };
    let depth = |l: &str| l.len() - l.trim_start().len();
    lines
        .take_while(|l| depth(l) > depth(head))
        .map(|l| l.trim().to_owned())
        .collect()
}

const TAG_ACTIONS: [&str; 2] = ["ec2:CreateTags", "ec2:DeleteTags"];

/// `ForAllValues:` is true for an empty set, and DeleteTags without tags
/// deletes every user tag of the instance.
#[test]
fn every_tag_statement_refuses_an_empty_tag_set() {
    let mut seen = 0;
    for file in POLICY_FILES {
        for statement in statements_in_json(&repo().join(file)) {
            let tags = actions_of(&statement)
                .iter()
                .any(|a| TAG_ACTIONS.contains(&a.as_str()));
            if statement["Effect"] == "Allow" && tags {
                seen += 1;
                assert_eq!(
                    statement["Condition"]["Null"]["aws:TagKeys"], "false",
                    "{file}: {statement}"
                );
            }
        }
    }
    for (from, to) in TEMPLATE_POLICIES {
        for block in statements_in_template(from, to) {
            let tags = actions_in_block(&block)
                .iter()
                .any(|a| TAG_ACTIONS.contains(&a.as_str()));
            if !block.contains("Effect: Deny") && tags {
                seen += 1;
                assert!(
                    nested_under(&block, "\"Null\":")
                        .contains(&"aws:TagKeys: \"false\"".to_owned()),
                    "quickstart:\n{block}"
                );
            }
        }
    }
    assert_eq!(
        seen, 6,
        "three tag statements in each launcher policy (launch, template, extend)"
    );
}

/// The launcher may launch, tag and extend only its compute environment's
/// instances: by the tag in the request (launch) or on the instance (extend).
#[test]
fn the_launcher_is_held_to_its_compute_environment() {
    let touches_instances = |actions: &BTreeSet<String>, resources: &str| {
        resources.contains(":instance/")
            && actions
                .iter()
                .any(|a| a == "ec2:RunInstances" || TAG_ACTIONS.contains(&a.as_str()))
    };
    let tag_key = |actions: &BTreeSet<String>, at_launch: bool| {
        if actions.contains("ec2:RunInstances") || at_launch {
            "aws:RequestTag/blockwatch:compute-environment"
        } else {
            "aws:ResourceTag/blockwatch:compute-environment"
        }
    };
    let mut held = 0;
    for statement in statements_in_json(&repo().join("bootstrap/iam/launcher-policy.json")) {
        let actions: BTreeSet<String> = actions_of(&statement).into_iter().collect();
        if statement["Effect"] != "Allow"
            || !touches_instances(&actions, &resources_of(&statement).join(" "))
        {
            continue;
        }
        let at_launch = !statement["Condition"]["StringEquals"]["ec2:CreateAction"].is_null();
        let key = tag_key(&actions, at_launch);
        assert_eq!(
            statement["Condition"]["StringEquals"][key], "COMPUTE_ENVIRONMENT",
            "{statement}"
        );
        held += 1;
    }
    assert_eq!(held, 3, "launch, tag at launch, extend");

    let mut held = 0;
    for block in statements_in_template("LauncherPolicy:", "Outputs:") {
        let actions = actions_in_block(&block);
        if block.contains("Effect: Deny") || !touches_instances(&actions, &block) {
            continue;
        }
        let at_launch = block.contains("ec2:CreateAction:");
        let key = format!("{}:", tag_key(&actions, at_launch));
        let names = nested_under(&block, &key);
        assert_eq!(
            names,
            [
                "- !Sub \"${EnvironmentName}-unmanaged\"",
                "- !Ref ComputeEnvironment"
            ],
            "quickstart:\n{block}"
        );
        assert!(
            nested_under(&block, "StringEquals:").contains(&key),
            "{block}"
        );
        held += 1;
    }
    assert_eq!(held, 3, "launch, tag at launch, extend");
}

/// The user data of every instance can hold secrets: the agent reads the
/// attributes of its own instance only.
#[test]
fn the_agent_reads_only_its_own_instances_attributes() {
    let statements = statements_in_json(&repo().join("bootstrap/iam/agent-policy.json"));
    let reads: Vec<_> = statements
        .iter()
        .filter(|s| {
            actions_of(s)
                .iter()
                .any(|a| a == "ec2:DescribeInstanceAttribute")
        })
        .collect();
    assert_eq!(reads.len(), 1, "{reads:?}");
    assert_eq!(reads[0]["Resource"], "arn:aws:ec2:*:*:instance/*");
    assert_eq!(
        reads[0]["Condition"]["ArnLike"]["ec2:SourceInstanceARN"],
        "arn:aws:ec2:*:*:instance/${ec2:InstanceID}"
    );
    let block = statements_in_template("PolicyName: blockwatch-agent", "InstanceProfile:")
        .into_iter()
        .find(|b| b.contains("ec2:DescribeInstanceAttribute"))
        .unwrap();
    assert_eq!(
        nested_under(&block, "ArnLike:"),
        ["ec2:SourceInstanceARN: !Sub \"arn:${AWS::Partition}:ec2:${AWS::Region}:${AWS::AccountId}:instance/${!ec2:InstanceID}\""],
        "{block}"
    );
}

/// `blockwatch-core` is pure by construction: nothing it links does IO.
#[test]
fn the_core_crate_links_nothing_that_does_io() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = std::process::Command::new(cargo)
        .current_dir(repo())
        .args([
            "tree",
            "--offline",
            "--locked",
            "-p",
            "blockwatch-core",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .output()
        .unwrap();
    let tree = blockwatch_testkit::output::Run::from(output);
    tree.assert_exit(0);
    let tree = tree.stdout;
    let crates: BTreeSet<&str> = tree
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    assert!(
        crates.contains("serde") && crates.contains("time"),
        "{tree}"
    );
    let io: Vec<_> = crates
        .iter()
        .filter(|c| {
            ["tokio", "hyper", "reqwest", "mio", "socket2", "sd-notify"].contains(c)
                || c.starts_with("aws-")
        })
        .collect();
    assert!(io.is_empty(), "blockwatch-core links {io:?}:\n{tree}");
}

/// The quickstart's job definition shows how a job reads its end: the host's
/// `/run/blockwatch` (the unit's RuntimeDirectory) mounted read-only.
#[test]
fn the_quickstart_job_mounts_the_deadline_files_read_only() {
    let template =
        std::fs::read_to_string(repo().join("bootstrap/cloudformation/quickstart.yaml")).unwrap();
    let after = template.split("\n  JobDefinition:\n").nth(1).unwrap();
    let job = after
        .lines()
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .collect::<Vec<_>>()
        .join("\n");
    let compact: String = job.split_whitespace().collect::<Vec<_>>().join(" ");
    for needle in [
        "Volumes: - Name: blockwatch Host: SourcePath: /run/blockwatch",
        "MountPoints: - SourceVolume: blockwatch ContainerPath: /run/blockwatch ReadOnly: true",
    ] {
        assert!(
            compact.contains(needle),
            "job definition lacks {needle:?}:\n{job}"
        );
    }
    let unit =
        std::fs::read_to_string(repo().join("packaging/systemd/blockwatch.service")).unwrap();
    assert!(
        unit.lines().any(|l| l == "RuntimeDirectory=blockwatch"),
        "{unit}"
    );
    assert!(
        unit.lines().any(|l| l == "RuntimeDirectoryMode=0755"),
        "{unit}"
    );
}

/// Heartbeats and completions end instances' waits: the agent may send them
/// only for groups that carry its compute environment's tag.
#[test]
fn the_agent_completes_hooks_only_of_its_compute_environments_groups() {
    const HOOK_CALLS: [&str; 2] = [
        "autoscaling:RecordLifecycleActionHeartbeat",
        "autoscaling:CompleteLifecycleAction",
    ];
    const TAGGED: &str = "aws:ResourceTag/blockwatch:compute-environment";
    let statements = statements_in_json(&repo().join("bootstrap/iam/agent-policy.json"));
    let granting: Vec<_> = statements
        .iter()
        .filter(|s| {
            actions_of(s)
                .iter()
                .any(|a| HOOK_CALLS.contains(&a.as_str()))
        })
        .collect();
    assert_eq!(granting.len(), 1, "{granting:?}");
    let statement = granting[0];
    assert_eq!(statement["Effect"], "Allow");
    assert_eq!(actions_of(statement), HOOK_CALLS);
    assert_eq!(
        statement["Resource"],
        "arn:aws:autoscaling:*:*:autoScalingGroup:*:autoScalingGroupName/*"
    );
    assert_eq!(
        statement["Condition"],
        serde_json::json!({"StringEquals": {TAGGED: "COMPUTE_ENVIRONMENT"}})
    );

    let blocks: Vec<_> = statements_in_template("PolicyName: blockwatch-agent", "InstanceProfile:")
        .into_iter()
        .filter(|b| HOOK_CALLS.iter().any(|a| b.contains(a)))
        .collect();
    assert_eq!(blocks.len(), 1, "{blocks:?}");
    let block = &blocks[0];
    assert!(block.contains("Effect: Allow"), "{block}");
    assert_eq!(
        nested_under(block, "StringEquals:"),
        [format!("{TAGGED}: !Sub \"${{EnvironmentName}}-unmanaged\"")],
        "quickstart:\n{block}"
    );
    assert!(
        block.contains(":autoScalingGroup:*:autoScalingGroupName/*\""),
        "{block}"
    );
}
