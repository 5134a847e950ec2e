//! An IMDS simulator that follows the EC2 documentation.
//!
//! - IMDSv2 only: `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds`
//!   (1-21600, else 400; a request carrying `X-Forwarded-For` gets 403), then
//!   every GET needs `X-aws-ec2-metadata-token`: missing, unknown or expired
//!   tokens get 401.
//! - Absent data is 404: tags when `InstanceMetadataTags` is disabled, user
//!   data, and each notice (spot, rebalance, scheduled events, Auto Scaling).
//! - Scheduled events use the GMT date format `21 Jan 2019 09:00:43 GMT`;
//!   spot and rebalance notices use RFC 3339 (`2017-09-18T08:22:00Z`).
//!
//! Tests change the instance while it runs through [`ImdsSimulator::update`];
//! the `imds-sim` binary exposes the same through `/_sim/*` (no token).
//!
//! The normal path above is exact. On top of it, [`Faults`] make the
//! simulator misbehave the ways a real IMDS can (set them with
//! [`ImdsSimulator::set_faults`] or `PUT /_sim/faults`, clear them with
//! [`ImdsSimulator::clear_faults`] or `DELETE /_sim/faults`):
//! - [`Fault::Status`]: answer an HTTP status such as 500, 503 or 429;
//! - [`Fault::Hang`]: read the request and never answer while the fault lasts;
//! - [`Fault::Gone`]: answer with bytes that are not HTTP, so the client fails
//!   at once, as when IMDS is gone (connection refused or reset);
//! - [`Fault::Body`]: answer 200 with a given body in place of the data
//!   (malformed JSON, an unknown spot `action`, garbage scheduled-event dates).
//!
//! A fault applies to every request ([`Faults::all`], IMDS gone or hanging
//! as a whole), to the token PUT ([`Faults::token`], e.g. 403 or 405), or to
//! metadata GETs by path or `*` ([`Faults::paths`]). [`Faults::token_lifetime_ms`]
//! makes IMDS forget every token that soon while still answering the TTL that
//! was asked, so a client that caches its token gets 401s until it asks for a
//! new one; [`ImdsSimulator::expire_tokens`] forgets them once, on demand.
//!
//! Over 400 lines: one simulator of the whole documented IMDS (tokens, paths, faults, control API).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use blockwatch_core::time_text::rfc3339;
use serde::{Deserialize, Serialize};
use time::macros::format_description;
use time::OffsetDateTime;
use tiny_http::{Header, Method, Request, Response, Server};

pub const TOKEN_PATH: &str = "/latest/api/token";
pub const TTL_HEADER: &str = "X-aws-ec2-metadata-token-ttl-seconds";
pub const TOKEN_HEADER: &str = "X-aws-ec2-metadata-token";
const MAX_TTL_SECONDS: u64 = 21_600;

/// The instance the simulator pretends to be. Serialised as the control API's body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstanceState {
    pub instance_id: String,
    pub region: String,
    pub availability_zone: String,
    pub instance_type: String,
    pub account_id: String,
    pub image_id: String,
    pub private_ip: String,
    #[serde(with = "time::serde::rfc3339")]
    pub pending_time: OffsetDateTime,
    /// `None`: the instance was launched without `InstanceMetadataTags`, so
    /// the whole tags tree is 404.
    pub tags: Option<BTreeMap<String, String>>,
    pub user_data: Option<String>,
    pub spot_instance_action: Option<SpotInstanceAction>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub rebalance_notice_time: Option<OffsetDateTime>,
    pub scheduled_events: Vec<ScheduledEvent>,
    /// `autoscaling/target-lifecycle-state`, e.g. `InService` or `Terminated`.
    pub target_lifecycle_state: Option<String>,
    /// The instance profile's role; its credentials are served under
    /// `iam/security-credentials/` (moto accepts any key).
    pub iam_role: Option<String>,
}

impl Default for InstanceState {
    fn default() -> Self {
        Self {
            instance_id: "i-0123456789abcdef0".to_owned(),
            region: "eu-west-1".to_owned(),
            availability_zone: "eu-west-1a".to_owned(),
            instance_type: "c6i.large".to_owned(),
            account_id: "123456789012".to_owned(),
            image_id: "ami-0abcdef1234567890".to_owned(),
            private_ip: "10.0.0.10".to_owned(),
            pending_time: OffsetDateTime::UNIX_EPOCH,
            tags: Some(BTreeMap::new()),
            user_data: None,
            spot_instance_action: None,
            rebalance_notice_time: None,
            scheduled_events: Vec::new(),
            target_lifecycle_state: None,
            iam_role: Some("blockwatch-instance".to_owned()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpotInstanceAction {
    /// `terminate`, `stop` or `hibernate`.
    pub action: String,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduledEvent {
    pub code: String,
    pub description: String,
    pub event_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// `active`, `canceled` or `completed`.
    pub state: String,
}

impl ScheduledEvent {
    /// An active `system-reboot`, as EC2 schedules one: a 15-minute window from `not_before`.
    pub fn reboot(event_id: &str, not_before: OffsetDateTime) -> Self {
        Self {
            code: "system-reboot".into(),
            description: "scheduled reboot".into(),
            event_id: event_id.into(),
            not_before,
            not_after: not_before + time::Duration::minutes(15),
            state: "active".into(),
        }
    }
}

/// One request as the simulator saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Exchange {
    pub method: String,
    pub path: String,
    /// The status answered; 0 when a fault gave no HTTP answer.
    pub status: u16,
}

/// How the simulator misbehaves instead of answering normally.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// Answer with this HTTP status and no data (500, 503, 429, 403, ...).
    Status(u16),
    /// Read the request and never answer while the fault lasts.
    Hang,
    /// Answer with bytes that are not HTTP: the client fails at once, as when
    /// the service is gone.
    Gone,
    /// Answer 200 with this body in place of the data.
    Body(String),
}

/// The faults in force; the default is none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Every request, token PUT included.
    pub all: Option<Fault>,
    /// The token PUT (`PUT /latest/api/token`).
    pub token: Option<Fault>,
    /// Metadata GETs, by exact path (`/latest/meta-data/spot/instance-action`)
    /// or `*` for every path. A `Body` fault is served only with a valid token.
    pub paths: BTreeMap<String, Fault>,
    /// Tokens are forgotten this many milliseconds after they are issued,
    /// whatever TTL was asked (and answered).
    pub token_lifetime_ms: Option<u64>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<InstanceState>,
    tokens: Mutex<BTreeMap<String, Instant>>,
    exchanges: Mutex<Vec<Exchange>>,
    faults: Mutex<Faults>,
    stopping: std::sync::atomic::AtomicBool,
    control_api: bool,
}

/// The longest a hung request is held, so a forgotten fault cannot keep a
/// thread for ever.
const MAX_HANG: Duration = Duration::from_secs(120);

/// A running simulator on a loopback port; stops when dropped.
pub struct ImdsSimulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: Arc<Server>,
    thread: Option<JoinHandle<()>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl std::fmt::Debug for ImdsSimulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImdsSimulator")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl ImdsSimulator {
    /// Starts on `127.0.0.1:0` (a free port) without the control API.
    pub fn start(state: InstanceState) -> std::io::Result<Self> {
        Self::start_on("127.0.0.1:0", state, false)
    }

    /// Starts on `addr`; `control_api` enables `/_sim/*`.
    pub fn start_on(addr: &str, state: InstanceState, control_api: bool) -> std::io::Result<Self> {
        let server = Arc::new(Server::http(addr).map_err(std::io::Error::other)?);
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| std::io::Error::other("simulator is not on an IP address"))?;
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            tokens: Mutex::new(BTreeMap::new()),
            exchanges: Mutex::new(Vec::new()),
            faults: Mutex::new(Faults::default()),
            stopping: std::sync::atomic::AtomicBool::new(false),
            control_api,
        });
        let thread = {
            let (server, shared) = (Arc::clone(&server), Arc::clone(&shared));
            std::thread::spawn(move || {
                for request in server.incoming_requests() {
                    handle(&shared, request);
                }
            })
        };
        Ok(Self {
            addr,
            shared,
            server,
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:<port>`, for `AWS_EC2_METADATA_SERVICE_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes the instance while it runs.
    pub fn update(&self, change: impl FnOnce(&mut InstanceState)) {
        change(&mut lock(&self.shared.state));
    }

    pub fn state(&self) -> InstanceState {
        lock(&self.shared.state).clone()
    }

    /// Makes every issued token expire now, as if its TTL had run out.
    pub fn expire_tokens(&self) {
        lock(&self.shared.tokens).clear();
    }

    /// Every request served so far.
    pub fn exchanges(&self) -> Vec<Exchange> {
        lock(&self.shared.exchanges).clone()
    }

    /// Replaces the faults in force.
    pub fn set_faults(&self, faults: Faults) {
        *lock(&self.shared.faults) = faults;
    }

    /// Changes the faults in force.
    pub fn update_faults(&self, change: impl FnOnce(&mut Faults)) {
        change(&mut lock(&self.shared.faults));
    }

    /// Back to normal: no faults (issued tokens stay valid).
    pub fn clear_faults(&self) {
        self.set_faults(Faults::default());
    }

    /// Every metadata GET gets `fault` (the token PUT still works).
    pub fn fail_every_path(&self, fault: Fault) {
        self.update_faults(|f| {
            f.paths.insert("*".to_owned(), fault);
        });
    }
}

impl Drop for ImdsSimulator {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Relaxed);
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Reply {
    status: u16,
    body: String,
    content_type: &'static str,
    ttl: Option<u64>,
}

impl Reply {
    fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            body: body.into(),
            content_type: "text/plain",
            ttl: None,
        }
    }
    fn json(body: String) -> Self {
        Self {
            status: 200,
            body,
            content_type: "application/json",
            ttl: None,
        }
    }
    fn not_found() -> Self {
        Self::text(404, NOT_FOUND_PAGE)
    }
}

// What IMDS sends with a 404 (an HTML page).
const NOT_FOUND_PAGE: &str = "<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\n<html><head><title>404 - Not Found</title></head><body><h1>404 - Not Found</h1></body></html>\n";

fn header<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request
        .headers()
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

fn handle(shared: &Arc<Shared>, mut request: Request) {
    let path = percent_decode(request.url().split('?').next().unwrap_or(""));
    let method = request.method().clone();
    let mut body = String::new();
    let _ = request.as_reader().read_to_string(&mut body);
    let is_control = shared.control_api && path.starts_with("/_sim/");
    let fault = if is_control {
        None
    } else {
        fault_for(shared, &method, &path, header(&request, TOKEN_HEADER))
    };
    let reply = match fault {
        Some(Fault::Hang) => return hang(shared, request, method, path),
        Some(Fault::Gone) => return gone(shared, request, &method, path),
        Some(Fault::Status(status)) => Reply::text(status, status_text(status)),
        Some(Fault::Body(text)) => Reply::text(200, text),
        None if is_control => control(shared, &method, &path, &body),
        None => serve(shared, &request, &method, &path),
    };
    lock(&shared.exchanges).push(Exchange {
        method: method.to_string(),
        path,
        status: reply.status,
    });
    let mut response = Response::from_string(reply.body).with_status_code(reply.status);
    if let Ok(h) = Header::from_bytes("Content-Type", reply.content_type) {
        response.add_header(h);
    }
    if let Some(ttl) = reply.ttl {
        if let Ok(h) = Header::from_bytes(TTL_HEADER, ttl.to_string()) {
            response.add_header(h);
        }
    }
    let _ = request.respond(response);
}

/// The fault for this request, if any. A `Body` fault on a path needs a
/// valid token, as real data would.
fn fault_for(shared: &Shared, method: &Method, path: &str, token: Option<&str>) -> Option<Fault> {
    let faults = lock(&shared.faults);
    if let Some(fault) = &faults.all {
        return Some(fault.clone());
    }
    if path == TOKEN_PATH {
        return faults.token.clone();
    }
    if *method != Method::Get {
        return None;
    }
    let fault = faults.paths.get(path).or_else(|| faults.paths.get("*"))?;
    if matches!(fault, Fault::Body(_)) && !token.is_some_and(|t| token_valid(shared, t)) {
        return None;
    }
    Some(fault.clone())
}

fn record(shared: &Shared, method: &Method, path: String, status: u16) {
    lock(&shared.exchanges).push(Exchange {
        method: method.to_string(),
        path,
        status,
    });
}

/// Holds the request, unanswered, on a thread of its own (so other requests
/// are still served) until the fault is lifted or the simulator stops.
fn hang(shared: &Arc<Shared>, request: Request, method: Method, path: String) {
    record(shared, &method, path.clone(), 0);
    let shared = Arc::clone(shared);
    std::thread::spawn(move || {
        let started = Instant::now();
        while started.elapsed() < MAX_HANG
            && !shared.stopping.load(Ordering::Relaxed)
            && fault_for(&shared, &method, &path, None) == Some(Fault::Hang)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        // The client has long given up; an answer now is harmless.
        drop(request);
    });
}

/// Answers with bytes that are not HTTP: the client drops the connection.
fn gone(shared: &Shared, request: Request, method: &Method, path: String) {
    record(shared, method, path, 0);
    let mut writer = request.into_writer();
    let _ = writer.write_all(b"\0\0gone\r\n\r\n");
    let _ = writer.flush();
}

fn status_text(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

fn token_valid(shared: &Shared, token: &str) -> bool {
    lock(&shared.tokens)
        .get(token)
        .is_some_and(|expiry| Instant::now() < *expiry)
}

fn serve(shared: &Shared, request: &Request, method: &Method, path: &str) -> Reply {
    if path == TOKEN_PATH {
        return match method {
            Method::Put => issue_token(shared, request),
            _ => Reply::text(405, "Method Not Allowed"),
        };
    }
    if *method != Method::Get {
        return Reply::text(405, "Method Not Allowed");
    }
    if !header(request, TOKEN_HEADER).is_some_and(|token| token_valid(shared, token)) {
        return Reply::text(401, "Unauthorized");
    }
    let state = lock(&shared.state).clone();
    metadata(&state, path)
}

fn issue_token(shared: &Shared, request: &Request) -> Reply {
    if header(request, "X-Forwarded-For").is_some() {
        return Reply::text(403, "Forbidden");
    }
    let ttl = match header(request, TTL_HEADER).map(|v| v.trim().parse::<u64>()) {
        Some(Ok(ttl)) if (1..=MAX_TTL_SECONDS).contains(&ttl) => ttl,
        _ => return Reply::text(400, "Bad Request"),
    };
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let token = format!(
        "AQAEA{:024x}{:08x}",
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    // A token lifetime fault shortens the life, not the TTL answered.
    let life = lock(&shared.faults)
        .token_lifetime_ms
        .map_or(Duration::from_secs(ttl), |ms| {
            Duration::from_millis(ms).min(Duration::from_secs(ttl))
        });
    lock(&shared.tokens).insert(token.clone(), Instant::now() + life);
    Reply {
        ttl: Some(ttl),
        ..Reply::text(200, token)
    }
}

fn metadata(state: &InstanceState, path: &str) -> Reply {
    let meta = "/latest/meta-data/";
    match path {
        "/latest/dynamic/instance-identity/document" => Reply::json(identity_document(state)),
        "/latest/user-data" => state
            .user_data
            .clone()
            .map_or_else(Reply::not_found, |d| Reply::text(200, d)),
        _ if path.starts_with(meta) => meta_data(state, &path[meta.len()..]),
        _ => Reply::not_found(),
    }
}

fn meta_data(state: &InstanceState, item: &str) -> Reply {
    let found = |text: String| Reply::text(200, text);
    match item {
        "instance-id" => found(state.instance_id.clone()),
        "instance-type" => found(state.instance_type.clone()),
        "ami-id" => found(state.image_id.clone()),
        "local-ipv4" => found(state.private_ip.clone()),
        "placement/availability-zone" => found(state.availability_zone.clone()),
        "placement/region" => found(state.region.clone()),
        "spot/instance-action" => {
            state
                .spot_instance_action
                .as_ref()
                .map_or_else(Reply::not_found, |a| {
                    Reply::json(
                        serde_json::json!({"action": a.action, "time": imds_time(a.time)})
                            .to_string(),
                    )
                })
        }
        "events/recommendations/rebalance" => state
            .rebalance_notice_time
            .map_or_else(Reply::not_found, |t| {
                Reply::json(serde_json::json!({"noticeTime": imds_time(t)}).to_string())
            }),
        "events/maintenance/scheduled" if state.scheduled_events.is_empty() => Reply::not_found(),
        "events/maintenance/scheduled" => Reply::json(scheduled_events(&state.scheduled_events)),
        "autoscaling/target-lifecycle-state" => state
            .target_lifecycle_state
            .clone()
            .map_or_else(Reply::not_found, found),
        "iam/security-credentials/" | "iam/security-credentials" => {
            state.iam_role.clone().map_or_else(Reply::not_found, found)
        }
        _ => {
            if let Some(role) = item.strip_prefix("iam/security-credentials/") {
                return match &state.iam_role {
                    Some(r) if r == role => Reply::json(credentials()),
                    _ => Reply::not_found(),
                };
            }
            tags(state, item)
        }
    }
}

fn tags(state: &InstanceState, item: &str) -> Reply {
    let Some(tags) = &state.tags else {
        return Reply::not_found();
    };
    match item {
        "tags/instance" | "tags/instance/" => {
            Reply::text(200, tags.keys().cloned().collect::<Vec<_>>().join("\n"))
        }
        _ => item
            .strip_prefix("tags/instance/")
            .and_then(|key| tags.get(key))
            .map_or_else(Reply::not_found, |value| Reply::text(200, value.clone())),
    }
}

fn identity_document(state: &InstanceState) -> String {
    let document = serde_json::json!({
        "accountId": state.account_id,
        "architecture": "x86_64",
        "availabilityZone": state.availability_zone,
        "billingProducts": null,
        "devpayProductCodes": null,
        "marketplaceProductCodes": null,
        "imageId": state.image_id,
        "instanceId": state.instance_id,
        "instanceType": state.instance_type,
        "kernelId": null,
        "pendingTime": imds_time(state.pending_time),
        "privateIp": state.private_ip,
        "ramdiskId": null,
        "region": state.region,
        "version": "2017-09-30",
    });
    serde_json::to_string_pretty(&document).unwrap_or_default()
}

fn scheduled_events(events: &[ScheduledEvent]) -> String {
    let events: Vec<_> = events
        .iter()
        .map(|e| {
            serde_json::json!({
                "NotBefore": gmt(e.not_before),
                "Code": e.code,
                "Description": e.description,
                "EventId": e.event_id,
                "NotAfter": gmt(e.not_after),
                "State": e.state,
            })
        })
        .collect();
    serde_json::to_string_pretty(&events).unwrap_or_default()
}

fn credentials() -> String {
    let now = OffsetDateTime::now_utc();
    serde_json::json!({
        "Code": "Success",
        "LastUpdated": imds_time(now),
        "Type": "AWS-HMAC",
        "AccessKeyId": "ASIAIMDSSIMULATOR000",
        "SecretAccessKey": "imds-simulator-secret",
        "Token": "imds-simulator-session-token",
        "Expiration": imds_time(now + time::Duration::hours(6)),
    })
    .to_string()
}

/// An instant as IMDS writes it (`2017-09-18T08:22:00Z`): whole seconds, UTC.
fn imds_time(at: OffsetDateTime) -> String {
    let whole = at.to_offset(time::UtcOffset::UTC);
    rfc3339(whole.replace_nanosecond(0).unwrap_or(whole))
}

/// `21 Jan 2019 09:00:43 GMT`, the format of scheduled events.
pub fn gmt(at: OffsetDateTime) -> String {
    at.to_offset(time::UtcOffset::UTC)
        .format(format_description!(
            "[day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
        ))
        .unwrap_or_default()
}

fn control(shared: &Shared, method: &Method, path: &str, body: &str) -> Reply {
    match (method, path) {
        (Method::Get, "/_sim/state") => show(&shared.state),
        (Method::Put, "/_sim/state") => replace(&shared.state, body, "state"),
        (Method::Get, "/_sim/faults") => show(&shared.faults),
        (Method::Put, "/_sim/faults") => replace(&shared.faults, body, "faults"),
        (Method::Delete, "/_sim/faults") => {
            *lock(&shared.faults) = Faults::default();
            Reply::text(200, "ok")
        }
        (Method::Post, "/_sim/expire-tokens") => {
            lock(&shared.tokens).clear();
            Reply::text(200, "ok")
        }
        (Method::Get, "/_sim/requests") => show(&shared.exchanges),
        _ => Reply::not_found(),
    }
}

/// A control endpoint's GET: the value as pretty JSON.
fn show<T: Serialize>(value: &Mutex<T>) -> Reply {
    Reply::json(serde_json::to_string_pretty(&*lock(value)).unwrap_or_default())
}

/// A control endpoint's PUT: the JSON `body` replaces the value.
fn replace<T: serde::de::DeserializeOwned>(value: &Mutex<T>, body: &str, what: &str) -> Reply {
    match serde_json::from_str::<T>(body) {
        Ok(new) => {
            *lock(value) = new;
            Reply::text(200, "ok")
        }
        Err(err) => Reply::text(400, format!("bad {what}: {err}")),
    }
}

fn percent_decode(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
