//! A tiny HTTP server for tests: a webhook receiver or a fake ECS agent
//! introspection API. Answers with a closure and records what it received.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tiny_http::{Response, Server};

/// One request the stub received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Received {
    /// The value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        crate::http::header_named(&self.headers, name)
    }
}

type Responder = dyn Fn(usize, &Received) -> (u16, String) + Send + Sync;

/// Stops when dropped.
pub struct StubServer {
    addr: SocketAddr,
    server: Arc<Server>,
    received: Arc<Mutex<Vec<Received>>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for StubServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StubServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl StubServer {
    /// `respond(n, request)` gives the status and body of the `n`th request (from 0).
    pub fn start(
        respond: impl Fn(usize, &Received) -> (u16, String) + Send + Sync + 'static,
    ) -> std::io::Result<Self> {
        let server = Arc::new(Server::http("127.0.0.1:0").map_err(std::io::Error::other)?);
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| std::io::Error::other("not an IP address"))?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let respond: Arc<Responder> = Arc::new(respond);
        let thread = {
            let (server, received) = (Arc::clone(&server), Arc::clone(&received));
            std::thread::spawn(move || {
                for mut request in server.incoming_requests() {
                    let mut body = String::new();
                    let _ = request.as_reader().read_to_string(&mut body);
                    let headers = request
                        .headers()
                        .iter()
                        .map(|h| {
                            (
                                h.field.as_str().as_str().to_owned(),
                                h.value.as_str().to_owned(),
                            )
                        })
                        .collect();
                    let seen = Received {
                        method: request.method().to_string(),
                        path: request.url().to_owned(),
                        headers,
                        body,
                    };
                    let n = {
                        let mut all = received
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        all.push(seen.clone());
                        all.len() - 1
                    };
                    let (status, text) = respond(n, &seen);
                    let _ = request.respond(Response::from_string(text).with_status_code(status));
                }
            })
        };
        Ok(Self {
            addr,
            server,
            received,
            thread: Some(thread),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Drop for StubServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Forwards `request` to `upstream` as it came (the SDK's signature is not
/// checked by moto) and returns the upstream's status and body.
pub fn forward(upstream: SocketAddr, request: &Received) -> (u16, String) {
    let skip = ["host", "content-length", "connection", "expect"];
    let headers: Vec<(&str, &str)> = request
        .headers
        .iter()
        .filter(|(name, _)| !skip.contains(&name.to_ascii_lowercase().as_str()))
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    match crate::http::request(
        upstream,
        &request.method,
        &request.path,
        &headers,
        &request.body,
    ) {
        Ok(response) => (response.status, response.body),
        Err(err) => (502, format!("forwarding failed: {err}")),
    }
}
