//! `blockwatch-launch list` and `extend` end to end: the real binary against
//! moto, with more instances than one page holds (`--page-size 5`).
//!
//! Over 400 lines: many independent scenarios of two subcommands.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use blockwatch_core::time_text::rfc3339;
use std::collections::BTreeMap;
use std::process::Command;

use aws_sdk_ec2::types::{
    InstanceMarketOptionsRequest, MarketType, ResourceType, Tag, TagSpecification,
};
use blockwatch_testkit::launcher::{canned, Launcher, Run};
use blockwatch_testkit::moto::MotoServer;
use blockwatch_testkit::stub::{forward, StubServer};
use time::OffsetDateTime;

const LAUNCHER: &str = env!("CARGO_BIN_EXE_blockwatch-launch");
/// The smallest page EC2 allows: ten instances take several pages.
const PAGE: &str = "5";
use blockwatch_core::tags::TAG_COMPUTE_ENVIRONMENT as CE_TAG;
use blockwatch_core::tags::TAG_LEASE_DURATION as LEASE_DURATION;
use blockwatch_core::tags::TAG_LEASE_END as LEASE_END;
/// The Capacity Block the EC2 stand-in knows.
const BLOCK_RESERVATION: &str = "cr-0b10c0000000000aa";

/// The research compute environment's instances, by what each shows.
struct Fleet {
    moto: MotoServer,
    /// EC2 in front of moto: two of the instances are Capacity Blocks.
    ec2: StubServer,
    /// ECS in front of moto: pages of at most `maxResults`.
    ecs: StubServer,
    /// `lease-duration 3h`, On-Demand; [1] is DRAINING.
    on_duration: Vec<String>,
    /// `lease-end` in 2 h.
    on_end: String,
    lease_end: String,
    /// Tagged with the compute environment's ARN, not its name.
    by_arn: String,
    /// Spot, `lease-duration 1h`, two jobs running.
    spot: String,
    /// A Capacity Block by its reservation's type.
    block_by_reservation: String,
    /// A Capacity Block by its `capacity-block` lifecycle.
    block_by_lifecycle: String,
    /// No lease tag, not registered.
    no_lease: String,
    /// Another compute environment's instance.
    other_ce: String,
    /// Terminated: never listed.
    terminated: String,
}

impl Fleet {
    fn research(&self) -> Vec<String> {
        let mut all = self.on_duration.clone();
        all.extend(
            [
                &self.on_end,
                &self.by_arn,
                &self.spot,
                &self.block_by_reservation,
                &self.block_by_lifecycle,
                &self.no_lease,
            ]
            .map(String::clone),
        );
        all.sort();
        all
    }

    fn launcher(&self, args: &[&str]) -> Run {
        Launcher::new(&self.moto.endpoint())
            .ec2_at(&self.ec2.url(""))
            .ecs_at(&self.ecs.url(""))
            .args(args)
            .run()
    }

    /// `extend` on the research compute environment.
    fn extend(&self, args: &[&str]) -> Run {
        self.launcher(&[&["extend", "--compute-environment", "research"], args].concat())
    }

    /// `list` of the research compute environment.
    fn list(&self, args: &[&str]) -> Run {
        self.launcher(&[&["list", "--compute-environment", "research"], args].concat())
    }

    /// Every instance's tags and launch time, straight from moto.
    async fn instances(&self) -> BTreeMap<String, (BTreeMap<String, String>, OffsetDateTime)> {
        blockwatch_testkit::launcher::instances(&self.moto)
            .await
            .unwrap()
            .iter()
            .map(|i| {
                let tags = i
                    .tags()
                    .iter()
                    .map(|t| (t.key().unwrap().to_owned(), t.value().unwrap().to_owned()))
                    .collect();
                let launched =
                    OffsetDateTime::from_unix_timestamp(i.launch_time().unwrap().secs()).unwrap();
                (i.instance_id().unwrap().to_owned(), (tags, launched))
            })
            .collect()
    }

    async fn tags(&self, id: &str) -> BTreeMap<String, String> {
        self.instances().await.remove(id).unwrap().0
    }

    async fn launched_at(&self, id: &str) -> OffsetDateTime {
        self.instances().await.remove(id).unwrap().1
    }

    /// The DescribeInstances pages of 5 that reached moto after the first
    /// `before` DescribeInstances calls.
    fn described_pages(&self, before: usize) -> Vec<blockwatch_testkit::moto::RecordedRequest> {
        self.moto
            .requests()
            .into_iter()
            .filter(|r| r.body.contains("Action=DescribeInstances&"))
            .skip(before)
            .filter(|r| r.body.contains("MaxResults=5"))
            .collect()
    }

    /// How many EC2 calls of `action` reached moto, and how many of them
    /// were DryRuns.
    fn ec2_calls(&self, action: &str) -> (usize, usize) {
        let calls: Vec<_> = self
            .moto
            .requests()
            .into_iter()
            .filter(|r| r.body.contains(&format!("Action={action}&")))
            .collect();
        let dry = calls
            .iter()
            .filter(|r| r.body.contains("DryRun=true"))
            .count();
        (calls.len(), dry)
    }
}

/// One instance in a reservation of its own (moto pages DescribeInstances
/// by reservation), On-Demand or Spot.
async fn launch(moto: &MotoServer, tags: &[(&str, &str)], spot: bool) -> String {
    let mut spec = TagSpecification::builder().resource_type(ResourceType::Instance);
    for (key, value) in tags {
        spec = spec.tags(Tag::builder().key(*key).value(*value).build());
    }
    let mut request = aws_sdk_ec2::Client::new(moto.sdk())
        .run_instances()
        .image_id("ami-0abcdef1234567890")
        .instance_type(aws_sdk_ec2::types::InstanceType::M6iLarge)
        .min_count(1)
        .max_count(1)
        .tag_specifications(spec.build());
    if spot {
        request = request.instance_market_options(
            InstanceMarketOptionsRequest::builder()
                .market_type(MarketType::Spot)
                .build(),
        );
    }
    let launched = request.send().await.unwrap();
    launched.instances()[0].instance_id().unwrap().to_owned()
}

/// EC2 as it shows Capacity Block instances, which moto cannot: one carries
/// a reservation of type `capacity-block`, the other the `capacity-block`
/// lifecycle. Everything else passes through to moto.
fn capacity_block_ec2(
    moto: &MotoServer,
    by_reservation: String,
    by_lifecycle: String,
) -> StubServer {
    let upstream = moto.addr();
    StubServer::start(move |_, request| {
        if request.body.contains("Action=DescribeCapacityReservations") {
            assert!(request.body.contains(BLOCK_RESERVATION), "{}", request.body);
            return (200, canned::capacity_block(BLOCK_RESERVATION, "2099-01-01T00:00:00Z"));
        }
        let (status, body) = forward(upstream, request);
        if !request.body.contains("Action=DescribeInstances&") || status != 200 {
            return (status, body);
        }
        let reservation = format!("<instanceId>{by_reservation}</instanceId>");
        let lifecycle = format!("<instanceId>{by_lifecycle}</instanceId>");
        let body = body
            .replace(
                &reservation,
                &format!("{reservation}<capacityReservationId>{BLOCK_RESERVATION}</capacityReservationId>"),
            )
            .replace(
                &lifecycle,
                &format!("{lifecycle}<instanceLifecycle>capacity-block</instanceLifecycle>"),
            );
        (status, body)
    })
    .unwrap()
}

async fn fleet() -> Fleet {
    let moto = MotoServer::start().await.unwrap();
    let cluster_arn = moto.create_unmanaged_ce("research", true).await.unwrap();
    moto.create_unmanaged_ce("other", true).await.unwrap();
    let ce_arn = aws_sdk_batch::Client::new(moto.sdk())
        .describe_compute_environments()
        .compute_environments("research")
        .send()
        .await
        .unwrap()
        .compute_environments()[0]
        .compute_environment_arn()
        .unwrap()
        .to_owned();

    let research_for_3h = [(CE_TAG, "research"), (LEASE_DURATION, "3h")];
    let mut on_duration = Vec::new();
    for _ in 0..4 {
        on_duration.push(launch(&moto, &research_for_3h, false).await);
    }
    let lease_end = rfc3339(
        OffsetDateTime::now_utc().replace_nanosecond(0).unwrap() + time::Duration::hours(2),
    );
    let on_end = launch(
        &moto,
        &[(CE_TAG, "research"), (LEASE_END, &lease_end)],
        false,
    )
    .await;
    let by_arn = launch(&moto, &[(CE_TAG, &ce_arn), (LEASE_DURATION, "2h")], false).await;
    let spot = launch(&moto, &[(CE_TAG, "research"), (LEASE_DURATION, "1h")], true).await;
    let block_by_reservation = launch(
        &moto,
        &[(CE_TAG, "research"), (LEASE_END, &lease_end)],
        false,
    )
    .await;
    let block_by_lifecycle = launch(
        &moto,
        &[(CE_TAG, "research"), (LEASE_END, &lease_end)],
        false,
    )
    .await;
    let no_lease = launch(&moto, &[(CE_TAG, "research")], false).await;
    let other_ce = launch(&moto, &[(CE_TAG, "other"), (LEASE_DURATION, "3h")], false).await;
    let terminated = launch(&moto, &research_for_3h, false).await;
    aws_sdk_ec2::Client::new(moto.sdk())
        .terminate_instances()
        .instance_ids(&terminated)
        .send()
        .await
        .unwrap();

    // Seven container instances (more than a page): one DRAINING, one
    // running two jobs; the rest of the instances are not registered.
    let mut registered = BTreeMap::new();
    for id in on_duration.iter().chain([&on_end, &by_arn, &spot]) {
        let arn = moto
            .register_container_instance(&cluster_arn, id)
            .await
            .unwrap();
        registered.insert(id.clone(), arn);
    }
    aws_sdk_ecs::Client::new(moto.sdk())
        .update_container_instances_state()
        .cluster(&cluster_arn)
        .container_instances(&registered[&on_duration[1]])
        .status(aws_sdk_ecs::types::ContainerInstanceStatus::Draining)
        .send()
        .await
        .unwrap();
    for _ in 0..2 {
        moto.start_task(&cluster_arn, &registered[&spot])
            .await
            .unwrap();
    }

    let ec2 = capacity_block_ec2(
        &moto,
        block_by_reservation.clone(),
        block_by_lifecycle.clone(),
    );
    let ecs = canned::paginating_ecs(moto.addr(), PAGE.parse().unwrap(), Vec::new()).unwrap();
    Fleet {
        moto,
        ec2,
        ecs,
        on_duration,
        on_end,
        lease_end,
        by_arn,
        spot,
        block_by_reservation,
        block_by_lifecycle,
        no_lease,
        other_ce,
        terminated,
    }
}

/// `list`'s JSON rows by instance id.
fn rows(run: &Run) -> BTreeMap<String, serde_json::Value> {
    run.assert_exit(0);
    let listed: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    listed["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["instance_id"].as_str().unwrap().to_owned(), i.clone()))
        .collect()
}

#[tokio::test]
async fn list_shows_every_instance_of_the_compute_environment_across_pages() {
    let fleet = fleet().await;
    let (described_before, _) = fleet.ec2_calls("DescribeInstances");
    let run = fleet.list(&["--page-size", PAGE, "--output", "json"]);
    let rows = rows(&run);
    let listed: Vec<String> = rows.keys().cloned().collect();
    assert_eq!(
        listed,
        fleet.research(),
        "every instance of research, across pages; not {} (other) nor {} (terminated)",
        fleet.other_ce,
        fleet.terminated
    );
    let pages = fleet.described_pages(described_before);
    assert!(pages.len() >= 2, "one page held them all: {pages:?}");
    assert!(pages.iter().any(|r| r.body.contains("NextToken=")));
    let ecs_pages = fleet
        .ecs
        .received()
        .into_iter()
        .filter(|r| {
            r.header("x-amz-target")
                .is_some_and(|t| t.ends_with(".ListContainerInstances"))
        })
        .count();
    assert!(
        ecs_pages >= 2,
        "seven container instances take two pages of 5"
    );

    // Markets, from the lifecycle and the capacity reservation.
    for id in fleet.research() {
        let expected = if id == fleet.spot {
            "spot"
        } else if id == fleet.block_by_reservation || id == fleet.block_by_lifecycle {
            "capacity-block"
        } else {
            "on-demand"
        };
        assert_eq!(rows[&id]["market"], expected, "{id}: {}", rows[&id]);
        assert_eq!(rows[&id]["state"], "running");
        assert_eq!(rows[&id]["instance_type"], "m6i.large");
    }
    assert_eq!(
        rows[&fleet.block_by_reservation]["capacity_reservation_id"],
        BLOCK_RESERVATION
    );

    // Lease ends: the lease-end tag, or the launch plus lease-duration.
    let launched = fleet.launched_at(&fleet.on_duration[0]).await;
    let row = &rows[&fleet.on_duration[0]];
    assert_eq!(
        row["lease_end"],
        rfc3339(launched + time::Duration::hours(3))
    );
    assert_eq!(row["lease_source"], "lease-duration");
    let left = row["seconds_left"].as_i64().unwrap();
    assert!((3 * 3600 - 120..=3 * 3600).contains(&left), "{left}");
    assert_eq!(rows[&fleet.on_end]["lease_end"], fleet.lease_end.as_str());
    assert_eq!(rows[&fleet.on_end]["lease_source"], "lease-end");
    let arn_launched = fleet.launched_at(&fleet.by_arn).await;
    assert_eq!(
        rows[&fleet.by_arn]["lease_end"],
        rfc3339(arn_launched + time::Duration::hours(2))
    );
    assert_eq!(rows[&fleet.no_lease]["lease_end"], serde_json::Value::Null);
    assert_eq!(
        rows[&fleet.no_lease]["seconds_left"],
        serde_json::Value::Null
    );

    // ECS: status and running jobs, or not registered.
    assert_eq!(rows[&fleet.on_duration[0]]["ecs_status"], "ACTIVE");
    assert_eq!(rows[&fleet.on_duration[0]]["running_jobs"], 0);
    assert_eq!(rows[&fleet.on_duration[1]]["ecs_status"], "DRAINING");
    assert_eq!(rows[&fleet.spot]["ecs_status"], "ACTIVE");
    assert_eq!(rows[&fleet.spot]["running_jobs"], 2);
    for unregistered in [&fleet.no_lease, &fleet.block_by_lifecycle] {
        assert_eq!(rows[unregistered]["ecs_status"], serde_json::Value::Null);
        assert_eq!(rows[unregistered]["running_jobs"], serde_json::Value::Null);
    }

    // The same as a table.
    let text = fleet.list(&["--page-size", PAGE]);
    text.assert_exit(0);
    let lines: Vec<&str> = text.stdout.lines().collect();
    assert!(
        lines[0].starts_with("compute environment research -> ECS cluster "),
        "{}",
        text.stdout
    );
    let head: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        head,
        ["INSTANCE", "TYPE", "MARKET", "STATE", "LEASE", "END", "LEFT", "ECS", "JOBS"],
        "{}",
        text.stdout
    );
    assert_eq!(lines.last(), Some(&"10 instances"), "{}", text.stdout);
    let line_of = |id: &str| -> Vec<String> {
        let found: Vec<&&str> = lines.iter().filter(|l| l.contains(id)).collect();
        assert_eq!(found.len(), 1, "{id} once: {}", text.stdout);
        found[0].split_whitespace().map(str::to_owned).collect()
    };
    for id in fleet.research() {
        let cells = line_of(&id);
        assert_eq!(cells[2], rows[&id]["market"].as_str().unwrap(), "{cells:?}");
    }
    let spot = line_of(&fleet.spot);
    assert_eq!(spot[spot.len() - 2..], ["ACTIVE", "2"], "{spot:?}");
    let draining = line_of(&fleet.on_duration[1]);
    assert_eq!(draining[draining.len() - 2..], ["DRAINING", "0"]);
    assert_eq!(draining[5], "2h", "left: {draining:?}");
    let unregistered = line_of(&fleet.no_lease);
    assert_eq!(
        unregistered[3..],
        ["running", "-", "-", "not", "registered", "-"],
        "{unregistered:?}"
    );
    let on_end = line_of(&fleet.on_end);
    assert_eq!(on_end[4], fleet.lease_end);

    // A compute environment that does not exist.
    let missing = fleet.launcher(&["list", "--compute-environment", "nope"]);
    missing.assert_exit(3);
    missing.assert_stderr_has("\"nope\" not found");
}

/// The lease end `extend` printed for `id` in its JSON report.
fn extended_to(run: &Run, id: &str) -> String {
    run.assert_exit(0);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    report["extended"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["instance_id"] == id)
        .unwrap_or_else(|| panic!("{id} not extended: {report}"))["new_end"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Runs `extend` expecting a refusal with exit `code` whose single stderr
/// line holds every needle, and checks that no tag changed.
async fn assert_refused(fleet: &Fleet, args: &[&str], code: i32, needles: &[&str]) {
    let before = fleet.instances().await;
    let writes_before = fleet.ec2_calls("CreateTags").0 + fleet.ec2_calls("DeleteTags").0;
    let run = fleet.extend(args);
    assert_eq!(run.code, code, "{args:?}: {}", run.stderr);
    assert_eq!(run.stderr.lines().count(), 1, "one line: {}", run.stderr);
    for needle in needles {
        assert!(
            run.stderr.contains(needle),
            "{args:?} lacks {needle:?}: {}",
            run.stderr
        );
    }
    assert_eq!(fleet.instances().await, before, "{args:?} changed a tag");
    let writes = fleet.ec2_calls("CreateTags").0 + fleet.ec2_calls("DeleteTags").0;
    assert_eq!(writes, writes_before, "{args:?} sent a tag write");
}

#[tokio::test]
async fn extend_moves_lease_ends_and_refuses_what_it_must_not_touch() {
    let fleet = fleet().await;
    let target = &fleet.on_duration[0];

    // Refused before any AWS call: an --until that is not a time, or is past.
    let requests = fleet.moto.requests().len();
    assert_refused(
        &fleet,
        &["--instance", target, "--until", "tomorrow"],
        2,
        &["--until \"tomorrow\" is not an RFC 3339 time like 2026-01-31T15:00:00Z"],
    )
    .await;
    assert_refused(
        &fleet,
        &["--all", "--until", "2020-01-01T00:00:00Z"],
        2,
        &["--until 2020-01-01T00:00:00Z is not in the future"],
    )
    .await;
    let describes = 2 * 2; // assert_refused's own look before and after
    assert_eq!(
        fleet.moto.requests().len() - requests,
        describes,
        "validation made no call"
    );

    // Capacity Blocks are extended by EC2, never by a tag.
    for block in [&fleet.block_by_reservation, &fleet.block_by_lifecycle] {
        assert_refused(
            &fleet,
            &["--instance", block, "--by", "1h"],
            9,
            &[
                block,
                "Capacity Block",
                "purchase-capacity-block-extension",
                "Extend a Capacity Block",
            ],
        )
        .await;
    }
    // Another compute environment's instance refuses the whole request.
    assert_refused(
        &fleet,
        &[
            "--instance",
            target,
            "--instance",
            &fleet.other_ce,
            "--by",
            "1h",
        ],
        9,
        &[
            &fleet.other_ce,
            "not in compute environment \"research\"",
            "\"other\"",
        ],
    )
    .await;
    assert_refused(
        &fleet,
        &["--instance", "i-0000000000000dead", "--by", "1h"],
        9,
        &["i-0000000000000dead"],
    )
    .await;
    assert_refused(
        &fleet,
        &["--instance", &fleet.no_lease, "--by", "1h"],
        9,
        &["no lease tag", "--until"],
    )
    .await;

    // --dry-run shows old -> new, checks permissions with DryRun, writes nothing.
    let launched = fleet.launched_at(target).await;
    let old_end = rfc3339(launched + time::Duration::hours(3));
    let new_end = rfc3339(launched + time::Duration::hours(4));
    let before = fleet.instances().await;
    let dry = fleet.extend(&[
        "--instance",
        target,
        "--by",
        "1h",
        "--dry-run",
        "--output",
        "json",
    ]);
    assert_eq!(extended_to(&dry, target), new_end);
    let report: serde_json::Value = serde_json::from_str(&dry.stdout).unwrap();
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["extended"][0]["old_end"], old_end.as_str());
    assert_eq!(report["extended"][0]["removes_lease_duration"], true);
    let dry_text = fleet.extend(&["--instance", target, "--by", "1h", "--dry-run"]);
    dry_text.assert_exit(0);
    dry_text.assert_stdout_has(format!(
        "{target}  {old_end} (blockwatch:lease-duration) -> {new_end}  (+1h)"
    ));
    dry_text.assert_stdout_has("nothing was written");
    assert_eq!(fleet.instances().await, before, "a dry run changed a tag");
    let (create, create_dry) = fleet.ec2_calls("CreateTags");
    let (delete, delete_dry) = fleet.ec2_calls("DeleteTags");
    assert_eq!((create, delete), (2, 2), "one DryRun of each per dry run");
    assert_eq!((create_dry, delete_dry), (create, delete), "only DryRuns");

    // --by on a lease-duration: the duration becomes an end, and goes.
    let run = fleet.extend(&["--instance", target, "--by", "1h"]);
    run.assert_exit(0);
    run.assert_stdout_has(format!(
        "{old_end} (blockwatch:lease-duration) -> {new_end}"
    ));
    run.assert_stdout_has("within a minute");
    let tags = fleet.tags(target).await;
    assert_eq!(tags.get(LEASE_END), Some(&new_end));
    assert_eq!(
        tags.get(LEASE_DURATION),
        None,
        "the duration tag would be ambiguous"
    );

    // --until, given with an offset, is written in UTC, whole seconds.
    let until = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap() + time::Duration::hours(5);
    let in_paris = until
        .to_offset(time::UtcOffset::from_hms(2, 0, 0).unwrap())
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let run = fleet.extend(&[
        "--instance",
        &fleet.on_end,
        "--until",
        &in_paris,
        "--output",
        "json",
    ]);
    assert_eq!(extended_to(&run, &fleet.on_end), rfc3339(until));
    assert_eq!(
        fleet.tags(&fleet.on_end).await.get(LEASE_END),
        Some(&rfc3339(until))
    );

    // --all, across pages: every lease moves by 30 minutes; Capacity Blocks
    // and the lease-less instance are skipped, the other compute environment
    // is left alone.
    let before = fleet.instances().await;
    let end_of = |id: &str| -> OffsetDateTime {
        let (tags, launched) = &before[id];
        match (tags.get(LEASE_END), tags.get(LEASE_DURATION)) {
            (Some(end), _) => {
                OffsetDateTime::parse(end, &time::format_description::well_known::Rfc3339).unwrap()
            }
            (None, Some(duration)) => {
                *launched
                    + time::Duration::try_from(humantime::parse_duration(duration).unwrap())
                        .unwrap()
            }
            _ => panic!("{id} has no lease"),
        }
    };
    let (described_before, _) = fleet.ec2_calls("DescribeInstances");
    let run = fleet.extend(&[
        "--all",
        "--by",
        "30m",
        "--page-size",
        PAGE,
        "--output",
        "json",
    ]);
    run.assert_exit(0);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let mut moved: Vec<String> = fleet.on_duration.clone();
    moved.extend([
        fleet.on_end.clone(),
        fleet.by_arn.clone(),
        fleet.spot.clone(),
    ]);
    moved.sort();
    let extended: Vec<&str> = report["extended"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["instance_id"].as_str().unwrap())
        .collect();
    assert_eq!(extended, moved, "{report}");
    let after = fleet.instances().await;
    for id in &moved {
        let expected = rfc3339(end_of(id) + time::Duration::minutes(30));
        assert_eq!(after[id].0.get(LEASE_END), Some(&expected), "{id}");
        assert_eq!(after[id].0.get(LEASE_DURATION), None, "{id}");
    }
    let mut skipped: Vec<&str> = report["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["instance_id"].as_str().unwrap())
        .collect();
    skipped.sort();
    let mut expected_skipped = vec![
        fleet.block_by_reservation.as_str(),
        fleet.block_by_lifecycle.as_str(),
        fleet.no_lease.as_str(),
    ];
    expected_skipped.sort();
    assert_eq!(skipped, expected_skipped, "{report}");
    for untouched in [
        &fleet.block_by_reservation,
        &fleet.block_by_lifecycle,
        &fleet.no_lease,
        &fleet.other_ce,
    ] {
        assert_eq!(after[untouched].0, before[untouched].0, "{untouched}");
    }
    let pages = fleet.described_pages(described_before).len();
    assert!(pages >= 2, "ten instances in pages of 5");
}

#[test]
fn list_and_extend_explain_themselves_beside_launching() {
    let help = |args: &[&str]| {
        let output = Command::new(LAUNCHER).args(args).output().unwrap();
        assert!(output.status.success(), "{args:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let top = help(&["--help"]);
    for needle in [
        "list",
        "extend",
        "--count",
        "InstanceInitiatedShutdownBehavior=terminate",
        "9   extend refused",
    ] {
        assert!(top.contains(needle), "--help lacks {needle}:\n{top}");
    }
    let extend = help(&["extend", "--help"]);
    for needle in [
        "--instance <ID>",
        "--all",
        "--by <DUR>",
        "--until <TIME>",
        "--dry-run",
        "Capacity Blocks",
    ] {
        assert!(
            extend.contains(needle),
            "extend --help lacks {needle}:\n{extend}"
        );
    }
    for text in [&extend, &help(&["list", "--help"])] {
        assert!(
            !text.contains("--page-size"),
            "a test knob, not an operator's flag"
        );
    }
}

/// `extend` may write tags after launch, which `TagOnlyAtLaunch` does not
/// allow: the statement that does keeps it to the lease tags of the
/// compute environment's instances (policies.rs checks the rest).
#[test]
fn the_launchers_tag_writes_after_launch_touch_only_lease_tags_of_blockwatch_instances() {
    let repo = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let policy: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo.join("bootstrap/iam/launcher-policy.json")).unwrap(),
    )
    .unwrap();
    let writes_tags = |s: &&serde_json::Value| {
        s["Action"].as_array().is_some_and(|a| {
            a.iter()
                .any(|x| x == "ec2:CreateTags" || x == "ec2:DeleteTags")
        }) || s["Action"] == "ec2:CreateTags"
            || s["Action"] == "ec2:DeleteTags"
    };
    let statements = policy["Statement"].as_array().unwrap();
    let tag_writes: Vec<&serde_json::Value> = statements.iter().filter(writes_tags).collect();
    assert_eq!(tag_writes.len(), 3, "{tag_writes:?}");
    for statement in tag_writes {
        // At creation only: instances and volumes in RunInstances or an
        // instant fleet, templates in CreateLaunchTemplate.
        let creations = ["RunInstances", "CreateFleet", "CreateLaunchTemplate"];
        let at_launch = match &statement["Condition"]["StringEquals"]["ec2:CreateAction"] {
            serde_json::Value::String(one) => creations.contains(&one.as_str()),
            serde_json::Value::Array(all) => {
                !all.is_empty()
                    && all
                        .iter()
                        .all(|a| a.as_str().is_some_and(|a| creations.contains(&a)))
            }
            _ => false,
        };
        let leases_only = statement["Condition"]["ForAllValues:StringEquals"]["aws:TagKeys"]
            == serde_json::json!([LEASE_END, LEASE_DURATION])
            && statement["Condition"]["StringEquals"][format!("aws:ResourceTag/{CE_TAG}")]
                == "COMPUTE_ENVIRONMENT"
            && statement["Condition"]["Null"]["aws:TagKeys"] == "false"
            && statement["Resource"] == "arn:aws:ec2:*:*:instance/*";
        assert!(at_launch || leases_only, "unscoped tag writes: {statement}");
    }
    let template =
        std::fs::read_to_string(repo.join("bootstrap/cloudformation/quickstart.yaml")).unwrap();
    let extend = &template[template
        .find("- Sid: ExtendLeasesOfTheComputeEnvironmentsInstances")
        .unwrap()..];
    let extend = &extend[..extend.find("Outputs:").unwrap()];
    for line in [
        "aws:ResourceTag/blockwatch:compute-environment:",
        "aws:TagKeys: [\"blockwatch:lease-end\", \"blockwatch:lease-duration\"]",
        "Resource: !Sub \"arn:${AWS::Partition}:ec2:${AWS::Region}:${AWS::AccountId}:instance/*\"",
    ] {
        assert!(extend.contains(line), "quickstart lacks {line}:\n{extend}");
    }
}

/// The launcher's AWS clients do real TLS handshakes (rustls on ring,
/// `blockwatch_aws::https_client`) and trust what `SSL_CERT_FILE` names.
#[tokio::test]
async fn list_works_against_aws_over_https_trusting_the_bundle_in_ssl_cert_file() {
    let ca = blockwatch_testkit::tls::TestCa::create().unwrap();
    let moto = MotoServer::start_tls(&ca).await.unwrap();
    assert!(moto.endpoint().starts_with("https://127.0.0.1:"));
    let cluster_arn = moto.create_unmanaged_ce("research", true).await.unwrap();
    let id = launch(
        &moto,
        &[(CE_TAG, "research"), (LEASE_DURATION, "3h")],
        false,
    )
    .await;
    moto.register_container_instance(&cluster_arn, &id)
        .await
        .unwrap();

    let run = Launcher::new(&moto.endpoint())
        .env("SSL_CERT_FILE", ca.ca_file())
        .env("AWS_MAX_ATTEMPTS", "1")
        .args([
            "list",
            "--compute-environment",
            "research",
            "--output",
            "json",
        ])
        .run();

    run.assert_exit(0);
    let rows = rows(&run);
    assert_eq!(rows.keys().collect::<Vec<_>>(), [&id], "{}", run.stdout);
    assert_eq!(rows[&id]["lease_source"], "lease-duration");
    assert_eq!(
        rows[&id]["ecs_status"], "ACTIVE",
        "ECS answered over HTTPS too"
    );
}
