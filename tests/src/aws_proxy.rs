//! A loopback proxy in front of moto that injects faults per AWS operation:
//! throttling, server errors, denials, connection resets and calls that
//! never answer. One std thread per connection, `Connection: close`, so a
//! hung connection never blocks another.
//!
//! Requests are matched by operation name against the `X-Amz-Target` header
//! (ECS), the path (Batch's REST paths are the lower-cased operation) and
//! `Action=` in the query or body (EC2), case-insensitively.
//!
//! For fleet benchmarks the proxy can also hold one operation to a fixed
//! rate (a token bucket, answering over the rate as that service does) and
//! attribute each request to a client: an endpoint
//! `http://127.0.0.1:<port>/_c/<label>` makes the SDK prefix every path with
//! `/_c/<label>`, which the proxy records and strips before forwarding.
//!
//! moto serves Auto Scaling but not `RecordLifecycleActionHeartbeat` and
//! `CompleteLifecycleAction`: the proxy answers those two itself, as the
//! API reference describes (Query protocol: 200 with an empty result, or a
//! `ValidationError` when no lifecycle action waits for that group, hook and
//! instance), and records them ([`AwsProxy::lifecycle_waits`],
//! [`AwsProxy::lifecycle_calls`]).
//!
//! Over 400 lines: one proxy; the relay and each fault it injects read together.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::http::request;

/// What the proxy does with a matching request instead of forwarding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Accept and read the request, never answer (until the proxy is dropped).
    Hang,
    /// Close the connection without answering, with the request still unread,
    /// so the kernel resets it (RST).
    Reset,
    /// Forward it, and pass the answer on this long after it came (a slow
    /// service).
    Delay(Duration),
    /// Answer this instead of forwarding.
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
}

impl Fault {
    /// A throttling error as the AWS JSON protocols (ECS, Batch) send it.
    pub fn throttling_json() -> Self {
        json_error(400, "ThrottlingException", "Rate exceeded")
    }

    /// A throttling error as EC2's query protocol sends it.
    pub fn throttling_ec2() -> Self {
        ec2_error(503, "RequestLimitExceeded", "Request limit exceeded.")
    }

    /// An internal error (HTTP 500) in the JSON protocols' shape.
    pub fn server_error() -> Self {
        json_error(
            500,
            "InternalFailure",
            "The request processing has failed because of an unknown error.",
        )
    }

    /// A denial in the JSON protocols' shape (ECS, Batch).
    pub fn access_denied_json() -> Self {
        json_error(
            400,
            "AccessDeniedException",
            "User: arn:aws:sts::123456789012:assumed-role/blockwatch/i-0 is not authorized to perform this action",
        )
    }

    /// A denial in EC2's shape.
    pub fn access_denied_ec2() -> Self {
        ec2_error(
            403,
            "UnauthorizedOperation",
            "You are not authorized to perform this operation.",
        )
    }

    /// AWS Batch over its request rate: HTTP 429 `TooManyRequestsException`
    /// ("Status Code: 429; Error Code: TooManyRequestsException").
    pub fn too_many_requests() -> Self {
        json_error(429, "TooManyRequestsException", "Too Many Requests")
    }

    /// A custom JSON-protocol error: `code` in `x-amzn-ErrorType` and `__type`.
    pub fn json_error(status: u16, code: &str, message: &str) -> Self {
        json_error(status, code, message)
    }
}

fn json_error(status: u16, code: &str, message: &str) -> Fault {
    Fault::Respond {
        status,
        headers: vec![
            ("x-amzn-ErrorType".into(), code.into()),
            ("x-amzn-RequestId".into(), "blockwatch-proxy".into()),
            ("Content-Type".into(), "application/x-amz-json-1.1".into()),
        ],
        body: serde_json::json!({ "__type": code, "message": message }).to_string(),
    }
}

fn ec2_error(status: u16, code: &str, message: &str) -> Fault {
    Fault::Respond {
        status,
        headers: vec![("Content-Type".into(), "text/xml;charset=UTF-8".into())],
        body: format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors><RequestID>blockwatch-proxy</RequestID></Response>"
        ),
    }
}

#[derive(Debug)]
struct Rule {
    operation: String,
    fault: Fault,
    remaining: Option<usize>,
}

/// A token bucket for one operation: `rate` tokens a second, at most `burst`.
#[derive(Debug)]
struct RateLimit {
    operation: String,
    rate: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
    fault: Fault,
}

impl RateLimit {
    /// Takes a token if there is one; `false` = over the rate.
    fn admit(&mut self, now: Instant) -> bool {
        // `now` is read under the lock, so the refill time never moves back
        // and no interval is earned twice.
        if now > self.refilled {
            let earned = now.duration_since(self.refilled).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + earned).min(self.burst);
            self.refilled = now;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One request the proxy received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The client label from a `/_c/<label>` path prefix, if any.
    pub client: Option<String>,
    /// The operation name as sent (`DescribeComputeEnvironments`, ...).
    pub operation: String,
    /// Answered by a fault or the rate limit instead of forwarded.
    pub faulted: bool,
}

/// A lifecycle hook call the proxy answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleCall {
    /// `RecordLifecycleActionHeartbeat` or `CompleteLifecycleAction`.
    pub operation: String,
    pub group: String,
    pub hook: String,
    pub instance_id: String,
    /// `LifecycleActionResult` (`CONTINUE`, `ABANDON`) of a completion.
    pub result: Option<String>,
    /// Whether a waiting action was found (else a `ValidationError`).
    pub accepted: bool,
}

/// An instance in `Terminating:Wait` on a group's hook.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Waiting {
    group: String,
    hook: String,
    instance_id: String,
}

#[derive(Debug, Default)]
struct Shared {
    waiting: Mutex<Vec<Waiting>>,
    lifecycle_calls: Mutex<Vec<LifecycleCall>>,
    rules: Mutex<Vec<Rule>>,
    limits: Mutex<Vec<RateLimit>>,
    /// One entry per request received: everything its operation can be matched on.
    seen: Mutex<Vec<String>>,
    log: Mutex<Vec<Seen>>,
    stopping: AtomicBool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The proxy; stops (and unblocks its hung connections) when dropped.
#[derive(Debug)]
pub struct AwsProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

impl AwsProxy {
    /// Binds 127.0.0.1:0 itself (no port race) and forwards to `upstream`.
    pub fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let acceptor = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("aws-proxy-accept".into())
                .spawn(move || accept_loop(&listener, upstream, &shared))?
        };
        Ok(Self {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`, for `AWS_ENDPOINT_URL`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Injects `fault` into requests whose operation contains `operation`;
    /// `times: None` = until cleared. Rules apply in the order injected.
    pub fn inject(&self, operation: &str, fault: Fault, times: Option<usize>) {
        lock(&self.shared.rules).push(Rule {
            operation: operation.to_ascii_lowercase(),
            fault,
            remaining: times,
        });
    }

    /// Holds requests whose operation contains `operation` to `per_second`
    /// (token bucket of `burst`, full at the start); over the rate the proxy
    /// answers `fault` instead of forwarding.
    pub fn rate_limit(&self, operation: &str, per_second: f64, burst: f64, fault: Fault) {
        lock(&self.shared.limits).push(RateLimit {
            operation: operation.to_ascii_lowercase(),
            rate: per_second,
            burst,
            tokens: burst,
            refilled: Instant::now(),
            fault,
        });
    }

    /// Removes every rule and rate limit: requests are forwarded again.
    pub fn clear(&self) {
        lock(&self.shared.rules).clear();
        lock(&self.shared.limits).clear();
    }

    /// Every request received so far, in order, with its client label.
    pub fn log(&self) -> Vec<Seen> {
        lock(&self.shared.log).clone()
    }

    /// Forgets the requests received so far (`seen` and `log`).
    pub fn reset_log(&self) {
        lock(&self.shared.seen).clear();
        lock(&self.shared.log).clear();
    }

    /// Auto Scaling put `instance_id` in `Terminating:Wait` on `hook` of
    /// `group`: heartbeats and one completion are accepted for it.
    pub fn lifecycle_waits(&self, group: &str, hook: &str, instance_id: &str) {
        lock(&self.shared.waiting).push(Waiting {
            group: group.to_owned(),
            hook: hook.to_owned(),
            instance_id: instance_id.to_owned(),
        });
    }

    /// The lifecycle hook calls answered so far, in order.
    pub fn lifecycle_calls(&self) -> Vec<LifecycleCall> {
        lock(&self.shared.lifecycle_calls).clone()
    }

    /// How many requests for `operation` the proxy has received (faulted or not).
    pub fn seen(&self, operation: &str) -> usize {
        let operation = operation.to_ascii_lowercase();
        lock(&self.shared.seen)
            .iter()
            .filter(|keys| keys.contains(&operation))
            .count()
    }
}

impl Drop for AwsProxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the blocking accept so its thread sees the flag and returns.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, upstream: SocketAddr, shared: &Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let shared = Arc::clone(shared);
        let _ = std::thread::Builder::new()
            .name("aws-proxy-conn".into())
            .spawn(move || {
                let _ = serve(stream, upstream, &shared);
            });
    }
}

/// One parsed request, as peeked from the socket.
#[derive(Debug)]
struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: String,
    /// Bytes the request takes on the wire (head and body).
    wire_len: usize,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        crate::http::header_named(&self.headers, name)
    }

    /// The operation's name as the client sent it: the `X-Amz-Target` suffix
    /// (ECS), `Action=` (EC2) or the last path segment (Batch's REST paths).
    fn operation(&self) -> String {
        if let Some(target) = self.header("x-amz-target") {
            return target.rsplit('.').next().unwrap_or(target).to_owned();
        }
        let query = self.target.split_once('?').map(|(_, q)| q).unwrap_or("");
        for part in self.body.split('&').chain(query.split('&')) {
            if let Some(action) = part.strip_prefix("Action=") {
                return action.to_owned();
            }
        }
        let path = self.target.split('?').next().unwrap_or_default();
        path.trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    /// Strips a `/_c/<label>` prefix from the path and returns the label.
    fn take_client(&mut self) -> Option<String> {
        let rest = self.target.strip_prefix("/_c/")?;
        let (label, path) = match rest.find(['/', '?']) {
            Some(at) => (rest[..at].to_owned(), rest[at..].to_owned()),
            None => (rest.to_owned(), String::new()),
        };
        self.target = if path.starts_with('/') {
            path
        } else {
            format!("/{path}")
        };
        Some(label)
    }

    /// Everything the operation can be matched on, lower-cased.
    fn match_keys(&self) -> String {
        let mut keys = self.target.to_ascii_lowercase();
        if let Some(target) = self.header("x-amz-target") {
            keys.push(' ');
            keys.push_str(&target.to_ascii_lowercase());
        }
        for part in self.body.split('&') {
            if let Some(action) = part.strip_prefix("Action=") {
                keys.push(' ');
                keys.push_str(&action.to_ascii_lowercase());
            }
        }
        keys
    }
}

const MAX_REQUEST: usize = 1 << 20;

/// Reads one request with `peek`, leaving it in the socket: a `Reset` then
/// closes with unread data, which makes the kernel send RST.
fn peek_request(stream: &TcpStream) -> std::io::Result<Request> {
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut last = 0;
    loop {
        let n = stream.peek(&mut buf)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed before a whole request",
            ));
        }
        if let Some(request) = parse_request(&buf[..n])? {
            return Ok(request);
        }
        if n == buf.len() {
            return Err(std::io::Error::other("request larger than 1 MiB"));
        }
        if n == last {
            // Nothing new buffered yet: wait for the client to send more.
            std::thread::sleep(Duration::from_millis(5));
        }
        last = n;
    }
}

fn parse_request(bytes: &[u8]) -> std::io::Result<Option<Request>> {
    let Some(head_end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&bytes[..head_end]);
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split_whitespace();
    let method = request_line.next().unwrap_or_default().to_owned();
    let target = request_line.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let length = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse::<usize>())
        .transpose()
        .map_err(|e| std::io::Error::other(format!("bad Content-Length: {e}")))?
        .unwrap_or(0);
    let body_start = head_end + 4;
    if bytes.len() < body_start + length {
        return Ok(None);
    }
    let body = String::from_utf8_lossy(&bytes[body_start..body_start + length]).into_owned();
    Ok(Some(Request {
        method,
        target,
        headers,
        body,
        wire_len: body_start + length,
    }))
}

fn take_fault(shared: &Shared, keys: &str) -> Option<Fault> {
    let mut rules = lock(&shared.rules);
    let rule = rules
        .iter_mut()
        .find(|r| r.remaining != Some(0) && keys.contains(&r.operation))?;
    if let Some(remaining) = rule.remaining.as_mut() {
        *remaining -= 1;
    }
    Some(rule.fault.clone())
}

fn over_rate(shared: &Shared, keys: &str) -> Option<Fault> {
    let mut limits = lock(&shared.limits);
    let now = Instant::now();
    limits
        .iter_mut()
        .filter(|l| keys.contains(&l.operation))
        .find_map(|l| (!l.admit(now)).then(|| l.fault.clone()))
}

fn serve(mut stream: TcpStream, upstream: SocketAddr, shared: &Shared) -> std::io::Result<()> {
    let mut request = peek_request(&stream)?;
    let client = request.take_client();
    let keys = request.match_keys();
    lock(&shared.seen).push(keys.clone());
    let fault = take_fault(shared, &keys).or_else(|| over_rate(shared, &keys));
    lock(&shared.log).push(Seen {
        client,
        operation: request.operation(),
        faulted: fault.is_some(),
    });
    if fault == Some(Fault::Reset) {
        // Dropping with the request unread resets the connection.
        return Ok(());
    }
    let mut consumed = vec![0u8; request.wire_len];
    stream.read_exact(&mut consumed)?;
    let (status, headers, body) = match fault {
        Some(Fault::Hang) => {
            while !shared.stopping.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
            }
            return stream.shutdown(Shutdown::Both);
        }
        Some(Fault::Respond {
            status,
            headers,
            body,
        }) => (status, headers, body.into_bytes()),
        Some(Fault::Delay(delay)) => {
            let answer = forward(&request, upstream)?;
            std::thread::sleep(delay);
            answer
        }
        Some(Fault::Reset) | None => match answer_lifecycle(&request, shared) {
            Some(answer) => answer,
            None => forward(&request, upstream)?,
        },
    };
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (name, value) in &headers {
        let skip = ["content-length", "transfer-encoding", "connection"]
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h));
        if !skip {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    stream.write_all(head.as_bytes())?;
    stream.write_all(&body)?;
    stream.flush()?;
    stream.shutdown(Shutdown::Write)
}

type Answer = (u16, Vec<(String, String)>, Vec<u8>);

const HEARTBEAT: &str = "RecordLifecycleActionHeartbeat";
const COMPLETE: &str = "CompleteLifecycleAction";
const AUTOSCALING_XMLNS: &str = "http://autoscaling.amazonaws.com/doc/2011-01-01/";

/// `RecordLifecycleActionHeartbeat` and `CompleteLifecycleAction`, which
/// moto does not serve, answered as Auto Scaling does; `None` for any other
/// operation.
fn answer_lifecycle(request: &Request, shared: &Shared) -> Option<Answer> {
    let operation = request.operation();
    if operation != HEARTBEAT && operation != COMPLETE {
        return None;
    }
    let param = |name: &str| {
        request
            .body
            .split('&')
            .find_map(|p| p.strip_prefix(&format!("{name}=")))
            .map(percent_decoded)
    };
    let call = |accepted| LifecycleCall {
        operation: operation.clone(),
        group: param("AutoScalingGroupName").unwrap_or_default(),
        hook: param("LifecycleHookName").unwrap_or_default(),
        instance_id: param("InstanceId").unwrap_or_default(),
        result: param("LifecycleActionResult"),
        accepted,
    };
    let wanted = call(false);
    let result_ok =
        operation != COMPLETE || matches!(wanted.result.as_deref(), Some("CONTINUE" | "ABANDON"));
    let mut waiting = lock(&shared.waiting);
    let found = waiting.iter().position(|w| {
        w.group == wanted.group && w.hook == wanted.hook && w.instance_id == wanted.instance_id
    });
    let accepted = result_ok && found.is_some();
    if let (true, Some(at)) = (operation == COMPLETE && accepted, found) {
        waiting.remove(at);
    }
    drop(waiting);
    lock(&shared.lifecycle_calls).push(call(accepted));
    let xml = vec![("Content-Type".to_owned(), "text/xml".to_owned())];
    if accepted {
        let body = format!(
            "<{operation}Response xmlns=\"{AUTOSCALING_XMLNS}\"><{operation}Result/><ResponseMetadata><RequestId>blockwatch-proxy</RequestId></ResponseMetadata></{operation}Response>"
        );
        return Some((200, xml, body.into_bytes()));
    }
    let message = if result_ok {
        format!(
            "No active Lifecycle Action found with instance ID {}",
            wanted.instance_id
        )
    } else {
        "LifecycleActionResult must be CONTINUE or ABANDON".to_owned()
    };
    let body = format!(
        "<ErrorResponse xmlns=\"{AUTOSCALING_XMLNS}\"><Error><Type>Sender</Type><Code>ValidationError</Code><Message>{message}</Message></Error><RequestId>blockwatch-proxy</RequestId></ErrorResponse>"
    );
    Some((400, xml, body.into_bytes()))
}

/// A form value, `+` and `%XX` decoded.
fn percent_decoded(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn forward(req: &Request, upstream: SocketAddr) -> std::io::Result<Answer> {
    // `request` sets Host, Connection and Content-Length itself. moto does not
    // check signatures, so the re-written Host does not matter.
    let headers: Vec<(&str, &str)> = req
        .headers
        .iter()
        .filter(|(n, _)| {
            !["host", "connection", "content-length"]
                .iter()
                .any(|h| n.eq_ignore_ascii_case(h))
        })
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let reply = request(upstream, &req.method, &req.target, &headers, &req.body)?;
    let chunked = reply
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(&reply.body)
    } else {
        reply.body.clone()
    };
    Ok((reply.status, reply.headers, body.into_bytes()))
}

fn dechunk(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size =
            usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(after.get(..size).unwrap_or_default());
        rest = after
            .get(size..)
            .unwrap_or_default()
            .trim_start_matches("\r\n");
    }
    out
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}
