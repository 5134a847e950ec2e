//! The launch report, `list` and `extend` as text (default) or JSON (`--output json`).

use crate::extend::ExtendReport;
use crate::launch::{Origin, Report};
use crate::list::ListReport;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    #[default]
    Text,
    Json,
}

/// Prints the command's result on stdout.
#[allow(clippy::print_stdout)]
pub fn print(text: &str) {
    println!("{text}");
}

fn rfc3339_or_dash(at: Option<time::OffsetDateTime>) -> String {
    at.map_or_else(|| "-".into(), blockwatch_core::time_text::rfc3339)
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
        "metadata: IMDSv2 required, tags in metadata, hop limit {} ({}; Batch jobs run in host network mode and can use the instance role at any hop limit); user data: {}",
        report.imds_hop_limit,
        if report.imds_hop_limit <= 1 {
            "keeps bridge and awsvpc containers from IMDS"
        } else {
            "bridge-mode containers reach IMDS"
        },
        if report.user_data {
            "ECS_CLUSTER script"
        } else {
            "none"
        }
    ));
    lines.push(format!(
        "on shutdown: {} (InstanceInitiatedShutdownBehavior): a power-off from the instance ends it and its billing",
        report.shutdown_behavior
    ));
    lines.push(launch_template_line(report));
    for warning in &report.warnings {
        lines.push(format!("warning: {warning}"));
    }
    if let Some(fleet) = &report.fleet_request {
        if report.dry_run {
            lines.push(format!(
                "fleet request (ec2:CreateFleet):\n{}",
                serde_json::to_string_pretty(fleet).unwrap_or_default()
            ));
        }
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
                "  {}  {}  {}  {}  {}  lease ends {}",
                i.instance_id,
                i.instance_type,
                i.lifecycle,
                i.subnet.as_deref().unwrap_or("-"),
                i.state.as_deref().unwrap_or("-"),
                rfc3339_or_dash(i.lease_end)
            ));
        }
        for error in &report.pool_errors {
            lines.push(format!(
                "  not filled: {} ({})",
                error.summary(),
                error.message
            ));
        }
    }
    lines.join("\n")
}

/// Which launch template the instances start from, and what becomes of it.
fn launch_template_line(report: &Report) -> String {
    let template = &report.launch_template;
    let head = format!(
        "launch template: {} ({}, version {})",
        template.name, template.id, template.version
    );
    let Some(based_on) = template.based_on else {
        let fate = match (template.origin, template.kept) {
            (Origin::Reused | Origin::AsGiven, _) => {
                "reused (same content, kept by an earlier launch)"
            }
            (Origin::Created, true) => "created and kept (--keep-template) for later launches",
            (Origin::Created, false) => "created, deleted once the launch is over",
        };
        return format!("{head}, {fate}");
    };
    let fate = match (template.origin, template.kept) {
        (Origin::AsGiven, _) => "yours as given: it already carries what blockwatch needs".to_owned(),
        (Origin::Reused, _) => format!(
            "your version {based_on} plus blockwatch's tags and options, reused (kept by an earlier launch)"
        ),
        (Origin::Created, true) => format!(
            "your version {based_on} plus blockwatch's tags and options, created and kept (--keep-template)"
        ),
        (Origin::Created, false) => format!(
            "your version {based_on} plus blockwatch's tags and options, created, deleted once the launch is over"
        ),
    };
    format!("{head}, {fate}")
}

/// `list` as a table (text) or a JSON document.
pub fn render_list(report: &ListReport, format: Output) -> String {
    match format {
        Output::Json => serde_json::to_string_pretty(report).unwrap_or_default(),
        Output::Text => list_text(report),
    }
}

fn list_text(report: &ListReport) -> String {
    let mut rows = vec![[
        "INSTANCE".to_owned(),
        "TYPE".to_owned(),
        "MARKET".to_owned(),
        "STATE".to_owned(),
        "LEASE END".to_owned(),
        "LEFT".to_owned(),
        "ECS".to_owned(),
        "JOBS".to_owned(),
    ]];
    for i in &report.instances {
        rows.push([
            i.instance_id.clone(),
            i.instance_type.clone(),
            i.market.to_string(),
            i.state.clone(),
            rfc3339_or_dash(i.lease_end),
            i.seconds_left
                .map_or_else(|| "-".to_owned(), crate::blocks::time_left),
            i.ecs_status
                .clone()
                .unwrap_or_else(|| "not registered".to_owned()),
            i.running_jobs
                .map_or_else(|| "-".to_owned(), |n| n.to_string()),
        ]);
    }
    let mut widths = [0usize; 8];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut lines = vec![format!(
        "compute environment {} -> ECS cluster {} at {}",
        report.compute_environment,
        report.cluster,
        blockwatch_core::time_text::rfc3339(report.listed_at)
    )];
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        lines.push(cells.join("  ").trim_end().to_owned());
    }
    lines.push(match report.instances.len() {
        1 => "1 instance".to_owned(),
        n => format!("{n} instances"),
    });
    lines.join("\n")
}

/// `extend`'s changes as text or JSON.
pub fn render_extend(report: &ExtendReport, format: Output) -> String {
    match format {
        Output::Json => serde_json::to_string_pretty(report).unwrap_or_default(),
        Output::Text => extend_text(report),
    }
}

fn signed(delta: time::Duration) -> String {
    let sign = if delta.is_negative() { "-" } else { "+" };
    let magnitude = std::time::Duration::from_secs(delta.whole_seconds().unsigned_abs());
    format!("{sign}{}", humantime::format_duration(magnitude))
}

fn extend_text(report: &ExtendReport) -> String {
    let mut lines = Vec::new();
    if report.extended.is_empty() {
        lines.push(format!(
            "compute environment {}: no instance to extend",
            report.compute_environment
        ));
    }
    for e in &report.extended {
        let old = match (e.old_end, e.old_source) {
            (Some(end), Some(source)) => {
                format!("{} ({})", rfc3339_or_dash(Some(end)), source.tag())
            }
            _ => "no lease".to_owned(),
        };
        let delta = e
            .old_end
            .map(|old| format!("  ({})", signed(e.new_end - old)))
            .unwrap_or_default();
        lines.push(format!(
            "{}  {old} -> {}{delta}",
            e.instance_id,
            rfc3339_or_dash(Some(e.new_end))
        ));
        if e.removes_lease_duration {
            lines.push(format!(
                "  {} replaces blockwatch:lease-duration",
                blockwatch_core::tags::TAG_LEASE_END
            ));
        }
        if let Some(warning) = &e.warning {
            lines.push(format!("  warning: {warning}"));
        }
    }
    for s in &report.skipped {
        lines.push(format!("skipped {} {}", s.instance_id, s.reason));
    }
    if report.dry_run {
        lines.push(format!(
            "dry run: {} lease end(s) would change; nothing was written",
            report.extended.len()
        ));
    } else if !report.extended.is_empty() {
        lines.push(format!(
            "moved {} lease end(s); running agents pick up the new end within a minute",
            report.extended.len()
        ));
    }
    lines.join("\n")
}
