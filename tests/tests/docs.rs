//! What the project says about the IMDS hop limit. AWS Batch runs ECS-EC2
//! jobs in host network mode, so a hop limit of 1 keeps them neither from
//! IMDS nor from the instance role: no text in the README, the launcher's
//! source or the AMI's files may say or suggest otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every text file under `path` (or `path` itself).
fn text_files(path: &Path, found: &mut Vec<PathBuf>) {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for entry in entries {
            text_files(&entry, found);
        }
    } else if std::fs::read_to_string(path).is_ok() {
        found.push(path.to_owned());
    }
}

/// A line without its comment marker, in lower case and without backticks.
fn plain(line: &str) -> String {
    let trimmed = line.trim_start();
    let text = ["//!", "///", "//", "#"]
        .iter()
        .find_map(|marker| trimmed.strip_prefix(marker))
        .unwrap_or(trimmed);
    text.replace('`', "").to_lowercase()
}

fn starts_a_list_item(line: &str) -> bool {
    let line = line.trim_start();
    line.starts_with("- ")
        || line.starts_with("* ")
        || line
            .split_once(". ")
            .is_some_and(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
}

/// Passages: runs of lines between blank lines, a list item each; with the
/// line each starts at (from 1).
fn passages(text: &str) -> Vec<(usize, String)> {
    let mut all: Vec<(usize, String)> = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (index, line) in text.lines().enumerate() {
        let words = plain(line);
        if words.trim().is_empty() || starts_a_list_item(&words) {
            all.extend(current.take());
        }
        if words.trim().is_empty() {
            continue;
        }
        let passage = current.get_or_insert_with(|| (index + 1, String::new()));
        passage.1.push(' ');
        passage.1.push_str(words.trim());
    }
    all.extend(current);
    all
}

/// Whether a passage speaks of the hop limit and of jobs or the instance
/// role without saying that Batch jobs use host network mode (which the hop
/// limit does not reach), or says outright that only the host reaches IMDS.
fn is_a_false_claim(passage: &str) -> bool {
    let hop_limit = ["hop limit", "hop-limit", "hop_limit", "hoplimit"]
        .iter()
        .any(|name| passage.contains(name));
    let about_jobs = passage.contains("job") || passage.contains("instance role");
    let says_host_mode = ["host network mode", "host mode", "host networking"]
        .iter()
        .any(|truth| passage.contains(truth));
    let only_the_host = passage.contains("only the host reaches imds")
        || passage.contains("only host-network processes");
    (hop_limit && about_jobs && !says_host_mode) || only_the_host
}

fn false_claims_in(text: &str) -> Vec<(usize, String)> {
    passages(text)
        .into_iter()
        .filter(|(_, passage)| is_a_false_claim(passage))
        .collect()
}

#[test]
fn no_text_claims_that_hop_limit_1_keeps_batch_jobs_from_imds() {
    let root = repo();
    let mut files = Vec::new();
    for path in ["README.md", "bootstrap/src", "ami"] {
        text_files(&root.join(path), &mut files);
    }
    assert!(files.len() > 5, "{files:?}");
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (line, passage) in false_claims_in(&text) {
            found.push(format!(
                "{}:{line}:{passage}",
                file.strip_prefix(&root).unwrap_or(file).display()
            ));
        }
    }
    assert!(
        found.is_empty(),
        "hop limit 1 does not keep Batch ECS-EC2 jobs (host network mode) from IMDS or the instance role; say so where the hop limit is explained:\n{}",
        found.join("\n")
    );
}

/// The check itself: what the project once said is caught, the truth is not.
#[test]
fn the_claims_once_made_are_caught_and_the_truth_passes() {
    let once_said = [
        "  # IMDSv2 only, hop limit 1: only host-network processes (blockwatch, the ECS\n  # agent) reach IMDS; jobs that need AWS use a job role.\n",
        "    /// IMDS hop limit, 1 to 64. 1: only the host reaches IMDS (blockwatch and the ECS agent run\n    /// there). 2: any container on a bridge network can reach IMDS and take the instance role's\n    /// credentials\n",
        "    fail(\"metadata_options.http_put_response_hop_limit must be 1 (2 lets job containers take the instance role)\")\n",
        "   - `MetadataOptions`: IMDSv2 required, tags in metadata, hop limit `--imds-hop-limit` (default 1). blockwatch\n     and the ECS agent run on the host network and need only 1. With 2, any container on Docker's bridge network\n     can reach IMDS and take the instance role's credentials. Jobs that need AWS should use a job role.\n",
        "Hop limit 1 keeps Batch jobs from IMDS.\n",
    ];
    for text in once_said {
        assert_eq!(false_claims_in(text).len(), 1, "not caught: {text}");
    }
    let true_texts = [
        "Hop limit 1 keeps containers in bridge and awsvpc modes from IMDS. Batch ECS-EC2 jobs run in `host`\nnetwork mode and can use the instance role at any hop limit.\n",
        "--imds-hop-limit must be between 1 and 64, not {0}\n",
        "- a job definition that retries on `Host EC2*`\n- hop limit 1 by default\n",
    ];
    for text in true_texts {
        assert_eq!(false_claims_in(text), Vec::new(), "wrongly caught: {text}");
    }
}
