//! The IAM policies match the code: the agent's policy allows exactly the
//! calls the agent makes, the launcher's covers the launcher's, and the
//! CloudFormation quickstart carries the same documents.

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

fn actions_in_json(path: &Path) -> BTreeSet<String> {
    let policy: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut actions = BTreeSet::new();
    for statement in policy["Statement"].as_array().unwrap() {
        assert_eq!(statement["Effect"], "Allow");
        match &statement["Action"] {
            serde_json::Value::String(a) => {
                actions.insert(a.clone());
            }
            serde_json::Value::Array(list) => {
                actions.extend(list.iter().map(|a| a.as_str().unwrap().to_owned()))
            }
            other => panic!("unexpected Action {other}"),
        }
    }
    actions
}

/// The actions listed in the quickstart between `from` and `to`.
fn actions_in_template(from: &str, to: &str) -> BTreeSet<String> {
    let text =
        std::fs::read_to_string(repo().join("bootstrap/cloudformation/quickstart.yaml")).unwrap();
    let start = text
        .find(from)
        .unwrap_or_else(|| panic!("{from} not in the template"));
    let end = start
        + text[start..]
            .find(to)
            .unwrap_or_else(|| panic!("{to} not after {from}"));
    text[start..end]
        .lines()
        .map(str::trim)
        .filter_map(|line| {
            line.strip_prefix("Action:")
                .or_else(|| line.strip_prefix("- "))
                .map(str::trim)
        })
        .filter(|a| {
            a.contains(':') && !a.contains(' ') && !a.starts_with("arn") && !a.starts_with('!')
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn agent_policy_allows_exactly_the_calls_the_agent_makes() {
    let calls = api_calls_in(&repo().join("agent/src"));
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
    // Through the agent's shared lookup.
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
            blockwatch::run::STOP_REASON_PREFIX
        ))
        .unwrap();
    let exit = retry.find("OnReason: \"*\"").unwrap();
    assert!(
        host < exit && ours < exit,
        "RETRY rules come before the catch-all EXIT"
    );
    assert!(text.contains("Type: UNMANAGED"));
}
