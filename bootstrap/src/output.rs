//! The launch report as text (default) or JSON (`--output json`).

use crate::launch::Report;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    #[default]
    Text,
    Json,
}

fn rfc3339_or_dash(at: Option<time::OffsetDateTime>) -> String {
    at.map_or_else(|| "-".into(), blockwatch::core::config::rfc3339)
}

/// The report in the chosen format.
pub fn render(report: &Report, format: Output) -> String {
    match format {
        Output::Json => json(report),
        Output::Text => text(report),
    }
}

/// The JSON document: instance ids, market, lease end per instance, cluster.
pub fn json(report: &Report) -> String {
    serde_json::to_string_pretty(report).unwrap_or_default()
}

pub fn text(report: &Report) -> String {
    let mut lines = Vec::new();
    let state = report
        .compute_environment_state
        .as_deref()
        .unwrap_or("unknown state");
    lines.push(format!(
        "compute environment {} (UNMANAGED, {state}) -> ECS cluster {}",
        report.compute_environment, report.cluster
    ));
    lines.push(format!(
        "{} {} x {} ({}), AMI {} from {}, lease {}",
        if report.dry_run {
            "would launch"
        } else {
            "launch"
        },
        report.requested,
        report.instance_types.join("|"),
        report.market,
        report.ami,
        report.ami_source,
        report.duration
    ));
    let tags: Vec<String> = report
        .tags
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    lines.push(format!("tags: {}", tags.join(" ")));
    lines.push(format!(
        "metadata: IMDSv2 required, tags in metadata, hop limit {}; user data: {}",
        report.imds_hop_limit,
        if report.user_data {
            "ECS_CLUSTER script"
        } else {
            "none"
        }
    ));
    for warning in &report.warnings {
        lines.push(format!("warning: {warning}"));
    }
    if report.dry_run {
        lines.push("dry run: EC2 accepted the request (DryRun); nothing was launched".to_owned());
    } else {
        lines.push(format!(
            "launched {} of {}:",
            report.instances.len(),
            report.requested
        ));
        for i in &report.instances {
            lines.push(format!(
                "  {}  {}  {}  {}  lease ends {}",
                i.instance_id,
                i.instance_type,
                i.subnet.as_deref().unwrap_or("-"),
                i.state.as_deref().unwrap_or("-"),
                rfc3339_or_dash(i.lease_end)
            ));
        }
    }
    lines.join("\n")
}
