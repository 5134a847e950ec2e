//! The simulator against the EC2 documentation, with raw HTTP requests.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use blockwatch_core::tags::TAG_CLUSTER;
use std::collections::BTreeMap;
use std::net::SocketAddr;

use blockwatch_testkit::http::{request, HttpResponse};
use blockwatch_testkit::imds::{
    Fault, Faults, ImdsSimulator, InstanceState, ScheduledEvent, SpotInstanceAction, TOKEN_HEADER,
    TTL_HEADER,
};
use time::macros::datetime;

fn put_token(addr: SocketAddr, ttl: Option<&str>) -> HttpResponse {
    let headers: Vec<(&str, &str)> = ttl.map(|t| vec![(TTL_HEADER, t)]).unwrap_or_default();
    request(addr, "PUT", "/latest/api/token", &headers, "").unwrap()
}

fn get(addr: SocketAddr, token: &str, path: &str) -> HttpResponse {
    request(addr, "GET", path, &[(TOKEN_HEADER, token)], "").unwrap()
}

fn token(addr: SocketAddr) -> String {
    let reply = put_token(addr, Some("21600"));
    assert_eq!(reply.status, 200);
    reply.body
}

#[test]
fn token_flow_follows_imdsv2() {
    let sim = ImdsSimulator::start(InstanceState::default()).unwrap();
    let addr = sim.addr();

    let reply = put_token(addr, Some("60"));
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header(TTL_HEADER), Some("60"));
    assert!(!reply.body.is_empty());

    for bad in [None, Some("0"), Some("21601"), Some("-5"), Some("soon")] {
        assert_eq!(put_token(addr, bad).status, 400, "ttl {bad:?}");
    }
    let forwarded = request(
        addr,
        "PUT",
        "/latest/api/token",
        &[(TTL_HEADER, "60"), ("X-Forwarded-For", "10.0.0.1")],
        "",
    )
    .unwrap();
    assert_eq!(forwarded.status, 403);
    assert_eq!(
        request(addr, "GET", "/latest/api/token", &[], "")
            .unwrap()
            .status,
        405
    );

    let path = "/latest/meta-data/instance-id";
    assert_eq!(
        request(addr, "GET", path, &[], "").unwrap().status,
        401,
        "no token: IMDSv1 is off"
    );
    assert_eq!(get(addr, "not-a-token", path).status, 401);
    let good = reply.body;
    assert_eq!(get(addr, &good, path).status, 200);
    sim.expire_tokens();
    assert_eq!(get(addr, &good, path).status, 401, "expired token");
}

#[test]
fn a_token_expires_after_its_ttl() {
    let sim = ImdsSimulator::start(InstanceState::default()).unwrap();
    let short = put_token(sim.addr(), Some("1")).body;
    assert_eq!(
        get(sim.addr(), &short, "/latest/meta-data/instance-id").status,
        200
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(
        get(sim.addr(), &short, "/latest/meta-data/instance-id").status,
        401
    );
}

#[test]
fn identity_document_tags_and_user_data() {
    let tags: BTreeMap<String, String> = [
        (TAG_CLUSTER.to_owned(), "c1".to_owned()),
        ("Name".to_owned(), "w".to_owned()),
    ]
    .into();
    let sim = ImdsSimulator::start(InstanceState {
        instance_id: "i-0feedface0000000a".into(),
        pending_time: datetime!(2026-11-29 08:00:05 UTC),
        tags: Some(tags),
        user_data: Some("#cloud-config\n".into()),
        ..InstanceState::default()
    })
    .unwrap();
    let (addr, t) = (sim.addr(), token(sim.addr()));

    let doc: serde_json::Value =
        serde_json::from_str(&get(addr, &t, "/latest/dynamic/instance-identity/document").body)
            .unwrap();
    assert_eq!(doc["instanceId"], "i-0feedface0000000a");
    assert_eq!(doc["pendingTime"], "2026-11-29T08:00:05Z");
    assert_eq!(doc["region"], "eu-west-1");
    assert_eq!(
        get(addr, &t, "/latest/meta-data/tags/instance").body,
        "Name\nblockwatch:cluster"
    );
    assert_eq!(
        get(
            addr,
            &t,
            "/latest/meta-data/tags/instance/blockwatch:cluster"
        )
        .body,
        "c1"
    );
    assert_eq!(
        get(addr, &t, "/latest/meta-data/tags/instance/absent").status,
        404
    );
    assert_eq!(get(addr, &t, "/latest/user-data").body, "#cloud-config\n");

    sim.update(|s| {
        s.tags = None;
        s.user_data = None;
    });
    assert_eq!(
        get(addr, &t, "/latest/meta-data/tags/instance").status,
        404,
        "tags disabled"
    );
    assert_eq!(
        get(
            addr,
            &t,
            "/latest/meta-data/tags/instance/blockwatch:cluster"
        )
        .status,
        404
    );
    assert_eq!(get(addr, &t, "/latest/user-data").status, 404);
}

#[test]
fn notices_are_404_until_set_and_use_the_documented_formats() {
    let sim = ImdsSimulator::start(InstanceState::default()).unwrap();
    let (addr, t) = (sim.addr(), token(sim.addr()));
    let spot = "/latest/meta-data/spot/instance-action";
    let rebalance = "/latest/meta-data/events/recommendations/rebalance";
    let scheduled = "/latest/meta-data/events/maintenance/scheduled";
    let lifecycle = "/latest/meta-data/autoscaling/target-lifecycle-state";
    for path in [spot, rebalance, scheduled, lifecycle] {
        assert_eq!(get(addr, &t, path).status, 404, "{path}");
    }

    sim.update(|s| {
        s.spot_instance_action = Some(SpotInstanceAction {
            action: "terminate".into(),
            time: datetime!(2017-09-18 08:22:00 UTC),
        });
        s.rebalance_notice_time = Some(datetime!(2020-10-27 08:22:00 UTC));
        s.scheduled_events = vec![ScheduledEvent {
            code: "system-reboot".into(),
            description: "scheduled reboot".into(),
            event_id: "instance-event-0d59937288b749b32".into(),
            not_before: datetime!(2019-01-21 09:00:43 UTC),
            not_after: datetime!(2019-01-21 09:17:23 UTC),
            state: "active".into(),
        }];
        s.target_lifecycle_state = Some("InService".into());
    });
    let action: serde_json::Value = serde_json::from_str(&get(addr, &t, spot).body).unwrap();
    assert_eq!(
        action,
        serde_json::json!({"action": "terminate", "time": "2017-09-18T08:22:00Z"})
    );
    let notice: serde_json::Value = serde_json::from_str(&get(addr, &t, rebalance).body).unwrap();
    assert_eq!(
        notice,
        serde_json::json!({"noticeTime": "2020-10-27T08:22:00Z"})
    );
    let events: serde_json::Value = serde_json::from_str(&get(addr, &t, scheduled).body).unwrap();
    assert_eq!(events[0]["NotBefore"], "21 Jan 2019 09:00:43 GMT");
    assert_eq!(events[0]["NotAfter"], "21 Jan 2019 09:17:23 GMT");
    assert_eq!(events[0]["State"], "active");
    assert_eq!(events[0]["EventId"], "instance-event-0d59937288b749b32");
    assert_eq!(get(addr, &t, lifecycle).body, "InService");

    sim.update(|s| s.scheduled_events[0].state = "canceled".into());
    let events: serde_json::Value = serde_json::from_str(&get(addr, &t, scheduled).body).unwrap();
    assert_eq!(
        events[0]["State"], "canceled",
        "state a test changes while it runs"
    );
}

#[test]
fn control_api_changes_state_and_is_off_by_default() {
    let sim = ImdsSimulator::start_on("127.0.0.1:0", InstanceState::default(), true).unwrap();
    let addr = sim.addr();
    let mut state: InstanceState =
        serde_json::from_str(&request(addr, "GET", "/_sim/state", &[], "").unwrap().body).unwrap();
    state.target_lifecycle_state = Some("Terminated".into());
    let body = serde_json::to_string(&state).unwrap();
    assert_eq!(
        request(addr, "PUT", "/_sim/state", &[], &body)
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        get(
            addr,
            &token(addr),
            "/latest/meta-data/autoscaling/target-lifecycle-state"
        )
        .body,
        "Terminated"
    );

    let plain = ImdsSimulator::start(InstanceState::default()).unwrap();
    assert_eq!(
        request(plain.addr(), "GET", "/_sim/state", &[], "")
            .unwrap()
            .status,
        401
    );
}

const INSTANCE_ID: &str = "/latest/meta-data/instance-id";
const SPOT: &str = "/latest/meta-data/spot/instance-action";

#[test]
fn status_faults_answer_that_status_until_cleared() {
    let sim = ImdsSimulator::start(InstanceState::default()).unwrap();
    let (addr, t) = (sim.addr(), token(sim.addr()));
    sim.fail_every_path(Fault::Status(500));
    assert_eq!(get(addr, &t, INSTANCE_ID).status, 500);
    assert_eq!(
        put_token(addr, Some("60")).status,
        200,
        "the token PUT still works"
    );
    sim.set_faults(Faults {
        paths: [(SPOT.to_owned(), Fault::Status(429))].into(),
        ..Faults::default()
    });
    assert_eq!(get(addr, &t, SPOT).status, 429);
    assert_eq!(get(addr, &t, INSTANCE_ID).status, 200, "only that path");
    sim.set_faults(Faults {
        token: Some(Fault::Status(403)),
        ..Faults::default()
    });
    assert_eq!(put_token(addr, Some("60")).status, 403);
    sim.clear_faults();
    assert_eq!(put_token(addr, Some("60")).status, 200);
    assert_eq!(
        get(addr, &t, INSTANCE_ID).status,
        200,
        "tokens survive faults"
    );
}

#[test]
fn body_faults_replace_the_data_but_still_need_a_token() {
    let sim = ImdsSimulator::start(InstanceState::default()).unwrap();
    let (addr, t) = (sim.addr(), token(sim.addr()));
    sim.set_faults(Faults {
        paths: [(SPOT.to_owned(), Fault::Body("{not json".to_owned()))].into(),
        ..Faults::default()
    });
    let reply = get(addr, &t, SPOT);
    assert_eq!((reply.status, reply.body.as_str()), (200, "{not json"));
    assert_eq!(get(addr, "stale", SPOT).status, 401);
}

#[test]
fn a_hanging_request_never_answers_while_others_are_served() {
    let sim = ImdsSimulator::start(InstanceState::default()).unwrap();
    let (addr, t) = (sim.addr(), token(sim.addr()));
    sim.set_faults(Faults {
        paths: [(SPOT.to_owned(), Fault::Hang)].into(),
        ..Faults::default()
    });
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_millis(500)))
        .unwrap();
    use std::io::{Read, Write};
    write!(
        stream,
        "GET {SPOT} HTTP/1.1\r\nHost: x\r\n{TOKEN_HEADER}: {t}\r\n\r\n"
    )
    .unwrap();
    let mut buffer = [0u8; 64];
    let read = stream.read(&mut buffer);
    assert!(
        matches!(&read, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "{read:?}"
    );
    assert_eq!(get(addr, &t, INSTANCE_ID).status, 200, "others are served");
    sim.clear_faults();
    assert_eq!(get(addr, &t, SPOT).status, 404);
    let hung = sim.exchanges().iter().filter(|e| e.status == 0).count();
    assert_eq!(hung, 1);
}

#[test]
fn a_gone_imds_fails_every_request_at_once_then_comes_back() {
    let sim = ImdsSimulator::start(InstanceState::default()).unwrap();
    let addr = sim.addr();
    sim.set_faults(Faults {
        all: Some(Fault::Gone),
        ..Faults::default()
    });
    let started = std::time::Instant::now();
    assert!(request(addr, "PUT", "/latest/api/token", &[(TTL_HEADER, "60")], "").is_err());
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    sim.clear_faults();
    let t = token(addr);
    assert_eq!(get(addr, &t, INSTANCE_ID).status, 200);
}

#[test]
fn a_token_lifetime_fault_forgets_tokens_that_still_claim_a_long_ttl() {
    let sim = ImdsSimulator::start(InstanceState::default()).unwrap();
    let addr = sim.addr();
    sim.set_faults(Faults {
        token_lifetime_ms: Some(300),
        ..Faults::default()
    });
    let reply = put_token(addr, Some("21600"));
    assert_eq!(reply.header(TTL_HEADER), Some("21600"));
    assert_eq!(get(addr, &reply.body, INSTANCE_ID).status, 200);
    std::thread::sleep(std::time::Duration::from_millis(400));
    assert_eq!(get(addr, &reply.body, INSTANCE_ID).status, 401);
}

#[test]
fn control_api_sets_and_clears_faults() {
    let sim = ImdsSimulator::start_on("127.0.0.1:0", InstanceState::default(), true).unwrap();
    let addr = sim.addr();
    let t = token(addr);
    let faults = r#"{"paths": {"*": {"status": 503}}, "token": {"status": 405}}"#;
    assert_eq!(
        request(addr, "PUT", "/_sim/faults", &[], faults)
            .unwrap()
            .status,
        200
    );
    assert_eq!(get(addr, &t, INSTANCE_ID).status, 503);
    assert_eq!(put_token(addr, Some("60")).status, 405);
    let shown: Faults =
        serde_json::from_str(&request(addr, "GET", "/_sim/faults", &[], "").unwrap().body).unwrap();
    assert_eq!(shown.token, Some(Fault::Status(405)));
    assert_eq!(
        request(addr, "PUT", "/_sim/faults", &[], r#"{"typo": 1}"#)
            .unwrap()
            .status,
        400
    );
    assert_eq!(
        request(addr, "DELETE", "/_sim/faults", &[], "")
            .unwrap()
            .status,
        200
    );
    assert_eq!(get(addr, &t, INSTANCE_ID).status, 200);
}
