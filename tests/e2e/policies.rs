//! The IAM policies match the code: the agent's policy allows exactly the
//! calls the agent makes, the launcher's covers the launcher's, and the
//! CloudFormation quickstart carries the same documents; its job definition
//! mounts the deadline files read-only.

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
                        ["batch", "ec2", "ecs", "ssm", "iam"].contains(&service)
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

fn actions_of(statement: &serde_json::Value) -> Vec<String> {
    match &statement["Action"] {
        serde_json::Value::String(a) => vec![a.clone()],
        serde_json::Value::Array(list) => list
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect(),
        other => panic!("unexpected Action {other}"),
    }
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
            blockwatch_core::state::STOP_REASON_PREFIX
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
    // cluster: by the ecs:cluster condition, or by the cluster's ARN where
    // the action takes the cluster as its resource (ListContainerInstances).
    for statement in statements.iter().filter(|s| s["Effect"] == "Allow") {
        let ecs: Vec<String> = actions_of(statement)
            .into_iter()
            .filter(|a| a.starts_with("ecs:"))
            .collect();
        if ecs.is_empty() {
            continue;
        }
        let by_condition = statement["Resource"] == "*"
            && statement["Condition"]["ArnLike"]["ecs:cluster"] == CLUSTER_PLACEHOLDER;
        let by_resource =
            statement["Resource"] == CLUSTER_PLACEHOLDER && statement["Condition"].is_null();
        assert!(
            by_condition || by_resource,
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
    for block in &blocks {
        let ecs: Vec<String> = actions_in_block(block)
            .into_iter()
            .filter(|a| a.starts_with("ecs:"))
            .collect();
        if ecs.is_empty() {
            continue;
        }
        let lines: Vec<&str> = block.lines().map(str::trim).collect();
        let conditioned = lines.contains(&"Resource: \"*\"")
            && lines.contains(&CLUSTER_IN_QUICKSTART)
            && (lines.contains(&"ArnLike:") || lines.contains(&"ArnNotLike:"));
        let by_resource = ecs == ["ecs:ListContainerInstances"]
            && lines.iter().any(|l| {
                l.starts_with("Resource: !Sub")
                    && l.ends_with(":cluster/${EnvironmentName}-unmanaged_Batch_*\"")
            });
        assert!(conditioned || by_resource, "not scoped:\n{block}");
        let deny = lines.contains(&"Effect: Deny");
        assert_eq!(deny, lines.contains(&"ArnNotLike:"), "{block}");
    }
    let deny = blocks
        .iter()
        .find(|b| b.contains("Effect: Deny"))
        .expect("the quickstart caps the managed policy too");
    for write in ECS_WRITES {
        assert!(actions_in_block(deny).contains(write), "{deny}");
    }
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
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tree = String::from_utf8_lossy(&output.stdout);
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
