//! A small Docker Engine API client: hyper 1 over the daemon's unix socket,
//! for the three requests the checkpoint signal needs (ping, inspect, kill).
//! hyper is in the tree already (reqwest, the AWS SDK), so this costs little
//! in the binary, unlike a full client such as bollard.
//!
//! Each request opens its own connection: they are rare (once per end), and
//! no pooled connection can go stale across a dockerd restart. Paths are
//! unversioned, so the daemon answers in its own API version and no version
//! is negotiated.

use std::path::PathBuf;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

/// Where Docker answers, by Docker's own convention.
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";
/// For the whole exchange, connect to last byte: a local daemon answers
/// these in milliseconds, and a hung one must not hold up the end.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// An inspect answer is a few KiB; more means something is wrong.
pub const BODY_CAP: usize = 256 * 1024;
const UNIX_SCHEME: &str = "unix://";

/// The Docker Engine on its unix socket.
#[derive(Debug, Clone)]
pub struct DockerEngine {
    socket: PathBuf,
    endpoint: String,
}

/// What blockwatch needs to know of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerFacts {
    pub id: String,
    pub running: bool,
    /// `Config.Env`: `NAME=value` entries, as the container was created.
    pub env: Vec<String>,
}

impl ContainerFacts {
    /// The value of `name` in the container's environment (`NAME=value`), if set.
    pub fn env_value(&self, name: &str) -> Option<&str> {
        self.env.iter().find_map(|entry| {
            entry
                .strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('='))
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("DOCKER_HOST={value:?} is not supported: blockwatch reaches Docker only through a unix socket, given as unix:///absolute/path")]
    UnsupportedHost { value: String },
    /// Connecting to the socket failed (absent, refused, permission): Docker cannot be reached.
    #[error("Docker cannot be reached at {endpoint}: {detail}")]
    Unreachable { endpoint: String, detail: String },
    /// No answer within [`REQUEST_TIMEOUT`].
    #[error("Docker at {endpoint} did not answer within {:?}", REQUEST_TIMEOUT)]
    Timeout { endpoint: String },
    /// The connection broke off before Docker's whole answer came (the
    /// request may have reached it).
    #[error("Docker's answer to {what} broke off: {detail}")]
    Broken { what: String, detail: String },
    #[error("Docker has no container {id}")]
    NoSuchContainer { id: String },
    #[error("container {id} is not running, so it cannot be signalled")]
    NotRunning { id: String },
    #[error("Docker answered {what} with HTTP {status}: {message}")]
    Status {
        what: String,
        status: u16,
        message: String,
    },
    #[error("Docker's answer to {what} is larger than {} KiB; refused", BODY_CAP / 1024)]
    TooLarge { what: String },
    #[error("Docker's answer to {what} is not the JSON expected: {detail}")]
    NotJson { what: String, detail: String },
    /// An id that is not 1..=64 lowercase hex characters: never put in a URL.
    #[error("{id:?} is not a Docker container id (1 to 64 lowercase hex characters); nothing was sent to Docker")]
    BadId { id: String },
    /// A signal name that is not [A-Z0-9]+: never put in a URL.
    #[error("{signal:?} is not a signal name (uppercase letters and digits, like SIGUSR1); nothing was sent to Docker")]
    BadSignal { signal: String },
}

impl DockerError {
    /// Docker itself could not be reached (UnsupportedHost, Unreachable,
    /// Timeout): the caller says so once and goes on without Docker. Only a
    /// timeout may come after the request was sent.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            Self::UnsupportedHost { .. } | Self::Unreachable { .. } | Self::Timeout { .. }
        )
    }
}

impl DockerEngine {
    /// `DOCKER_HOST` when set (only `unix://<absolute path>`; anything else, e.g. tcp://, is an
    /// `UnsupportedHost` error naming the value), else `unix:///var/run/docker.sock`.
    pub fn from_env() -> Result<Self, DockerError> {
        let value = std::env::var("DOCKER_HOST").ok();
        Self::from_docker_host(value.as_deref())
    }

    /// Same, from an explicit DOCKER_HOST value (testable without touching the process env).
    /// Empty counts as unset, as it does for Docker's own client.
    pub fn from_docker_host(value: Option<&str>) -> Result<Self, DockerError> {
        let socket = match value {
            None | Some("") => DEFAULT_DOCKER_SOCKET,
            Some(value) => value
                .strip_prefix(UNIX_SCHEME)
                .filter(|path| path.starts_with('/'))
                .ok_or_else(|| DockerError::UnsupportedHost {
                    value: value.to_owned(),
                })?,
        };
        Ok(Self {
            socket: PathBuf::from(socket),
            endpoint: format!("{UNIX_SCHEME}{socket}"),
        })
    }

    /// `unix:///var/run/docker.sock`, for log lines.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// GET /_ping.
    pub async fn ping(&self) -> Result<(), DockerError> {
        let answer = self.request(Method::GET, "/_ping".to_owned()).await?;
        match answer.status {
            StatusCode::OK => Ok(()),
            _ => Err(answer.unexpected()),
        }
    }

    /// GET /containers/{id}/json: whether it runs, its Config.Env.
    pub async fn container(&self, id: &str) -> Result<ContainerFacts, DockerError> {
        check_id(id)?;
        let answer = self
            .request(Method::GET, format!("/containers/{id}/json"))
            .await?;
        match answer.status {
            StatusCode::OK => answer.inspect(),
            StatusCode::NOT_FOUND => Err(DockerError::NoSuchContainer { id: id.to_owned() }),
            _ => Err(answer.unexpected()),
        }
    }

    /// POST /containers/{id}/kill?signal=<signal>.
    pub async fn kill(&self, id: &str, signal: &str) -> Result<(), DockerError> {
        check_id(id)?;
        check_signal(signal)?;
        let answer = self
            .request(
                Method::POST,
                format!("/containers/{id}/kill?signal={signal}"),
            )
            .await?;
        match answer.status {
            status if status.is_success() => Ok(()),
            StatusCode::NOT_FOUND => Err(DockerError::NoSuchContainer { id: id.to_owned() }),
            StatusCode::CONFLICT => Err(DockerError::NotRunning { id: id.to_owned() }),
            _ => Err(answer.unexpected()),
        }
    }

    /// One exchange on a new connection, bounded by [`REQUEST_TIMEOUT`].
    async fn request(&self, method: Method, path: String) -> Result<Answer, DockerError> {
        let what = format!("{method} {path}");
        tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(method, path, what))
            .await
            .map_err(|_| DockerError::Timeout {
                endpoint: self.endpoint.clone(),
            })?
    }

    async fn exchange(
        &self,
        method: Method,
        path: String,
        what: String,
    ) -> Result<Answer, DockerError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|err| DockerError::Unreachable {
                endpoint: self.endpoint.clone(),
                detail: connect_detail(&err),
            })?;
        let broken = |err: hyper::Error| DockerError::Broken {
            what: what.clone(),
            detail: err.to_string(),
        };
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                .await
                .map_err(broken)?;
        // The connection's errors come back through send_request and the
        // body; the guard ends it with the exchange, even on a timeout.
        let _connection = AbortOnDrop(tokio::spawn(connection));
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "docker")
            .body(Empty::new())
            .map_err(|err| DockerError::Broken {
                what: what.clone(),
                detail: err.to_string(),
            })?;
        let response = sender.send_request(request).await.map_err(broken)?;
        let status = response.status();
        let mut body = response.into_body();
        let mut bytes = Vec::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.map_err(broken)?.into_data() {
                if bytes.len() + data.len() > BODY_CAP {
                    return Err(DockerError::TooLarge { what });
                }
                bytes.extend_from_slice(&data);
            }
        }
        Ok(Answer {
            what,
            status,
            body: bytes,
        })
    }
}

/// Aborts the spawned connection task when dropped.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<Result<(), hyper::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Docker's whole answer to one request.
#[derive(Debug)]
struct Answer {
    /// `GET /_ping`: the request, for error messages.
    what: String,
    status: StatusCode,
    body: Vec<u8>,
}

impl Answer {
    /// A status this request does not expect, with Docker's own message.
    fn unexpected(self) -> DockerError {
        #[derive(serde::Deserialize)]
        struct Message {
            message: String,
        }
        let message = match serde_json::from_slice::<Message>(&self.body) {
            Ok(parsed) => parsed.message,
            Err(_) => String::from_utf8_lossy(&self.body).trim().to_owned(),
        };
        DockerError::Status {
            what: self.what,
            status: self.status.as_u16(),
            message,
        }
    }

    fn inspect(self) -> Result<ContainerFacts, DockerError> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Inspect {
            id: String,
            state: State,
            config: Config,
        }
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct State {
            running: bool,
        }
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Config {
            /// `null` for a container created without one.
            env: Option<Vec<String>>,
        }
        let inspect: Inspect =
            serde_json::from_slice(&self.body).map_err(|err| DockerError::NotJson {
                what: self.what,
                detail: err.to_string(),
            })?;
        Ok(ContainerFacts {
            id: inspect.id,
            running: inspect.state.running,
            env: inspect.config.env.unwrap_or_default(),
        })
    }
}

/// The id goes into a URL path: full or short hex ids only, as the ECS
/// agent's `DockerId` is, so no name or `../` ever reaches Docker.
fn check_id(id: &str) -> Result<(), DockerError> {
    let hex = id
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if (1..=64).contains(&id.len()) && hex {
        Ok(())
    } else {
        Err(DockerError::BadId { id: id.to_owned() })
    }
}

/// The signal goes into a query string: a name like SIGUSR1 needs no
/// encoding, and anything else is refused rather than encoded.
fn check_signal(signal: &str) -> Result<(), DockerError> {
    let name = signal
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
    if !signal.is_empty() && name {
        Ok(())
    } else {
        Err(DockerError::BadSignal {
            signal: signal.to_owned(),
        })
    }
}

/// Words an operator acts on, for the usual reasons a connect fails.
fn connect_detail(err: &std::io::Error) -> String {
    match err.kind() {
        std::io::ErrorKind::NotFound => "no socket there (is Docker running?)".to_owned(),
        std::io::ErrorKind::ConnectionRefused => {
            "connection refused (is Docker running?)".to_owned()
        }
        std::io::ErrorKind::PermissionDenied => {
            "permission denied (blockwatch needs access to the socket)".to_owned()
        }
        _ => err.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    const ID: &str = "4c01db0b339c6e9f5a1ab8b28d1e7f2a6d1f4e5b3c2a1908f7e6d5c4b3a29180";

    /// A Docker stand-in on a unix socket in a temporary directory: each
    /// connection gets `answer` (raw HTTP/1.1), or nothing at all when it
    /// is `None` (a hung daemon); the request heads it received are kept.
    struct FakeDocker {
        dir: tempfile::TempDir,
        heads: Arc<Mutex<Vec<String>>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl FakeDocker {
        fn start(answer: Option<Vec<u8>>) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let listener = UnixListener::bind(dir.path().join("docker.sock")).unwrap();
            let heads = Arc::new(Mutex::new(Vec::new()));
            let seen = heads.clone();
            let task = tokio::spawn(async move {
                let mut held = Vec::new();
                loop {
                    let (mut stream, _) = listener.accept().await.unwrap();
                    let head = read_head(&mut stream).await;
                    seen.lock().unwrap().push(head);
                    match &answer {
                        // The client may hang up once it has seen enough.
                        Some(bytes) => {
                            let _ = stream.write_all(bytes).await;
                            let _ = stream.shutdown().await;
                        }
                        None => held.push(stream),
                    }
                }
            });
            Self { dir, heads, task }
        }

        fn engine(&self) -> DockerEngine {
            let host = format!("unix://{}", self.dir.path().join("docker.sock").display());
            DockerEngine::from_docker_host(Some(&host)).unwrap()
        }

        fn request_lines(&self) -> Vec<String> {
            let heads = self.heads.lock().unwrap();
            heads
                .iter()
                .map(|head| head.lines().next().unwrap_or_default().to_owned())
                .collect()
        }
    }

    impl Drop for FakeDocker {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn read_head(stream: &mut tokio::net::UnixStream) -> String {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await.unwrap() == 0 {
                break;
            }
            head.push(byte[0]);
        }
        String::from_utf8(head).unwrap()
    }

    fn http(status: &str, content_type: &str, body: &str) -> Option<Vec<u8>> {
        Some(
            format!(
                "HTTP/1.1 {status}\r\nApi-Version: 1.41\r\nContent-Type: {content_type}\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
    }

    fn json(status: &str, body: &str) -> Option<Vec<u8>> {
        http(status, "application/json", body)
    }

    /// Trimmed from a real `docker inspect` (Engine 20.10).
    fn inspect_body(running: bool, env: &str) -> String {
        format!(
            r#"{{"Id":"{ID}","Created":"2026-12-07T03:00:00Z","Path":"sh",
              "State":{{"Status":"running","Running":{running},"Paused":false,"Pid":4242,"ExitCode":0}},
              "Name":"/ecs-job-1","Config":{{"Hostname":"ip-10-0-0-1","Env":{env},"Cmd":["sh"],
              "Image":"busybox"}},"HostConfig":{{"NetworkMode":"host"}}}}"#
        )
    }

    #[tokio::test]
    async fn ping_sends_get_ping_with_host_docker() {
        let fake = FakeDocker::start(http("200 OK", "text/plain; charset=utf-8", "OK"));
        fake.engine().ping().await.unwrap();
        let heads = fake.heads.lock().unwrap().clone();
        assert_eq!(heads.len(), 1);
        assert!(heads[0].starts_with("GET /_ping HTTP/1.1\r\n"), "{heads:?}");
        assert!(
            heads[0]
                .to_ascii_lowercase()
                .contains("\r\nhost: docker\r\n"),
            "{heads:?}"
        );
    }

    #[tokio::test]
    async fn ping_reports_an_unexpected_status_with_dockers_message() {
        let fake = FakeDocker::start(json("500 Internal Server Error", r#"{"message":"boom"}"#));
        let err = fake.engine().ping().await.unwrap_err();
        assert!(
            matches!(&err, DockerError::Status { status: 500, message, .. } if message == "boom"),
            "{err:?}"
        );
        assert!(!err.is_unreachable());
        assert_eq!(
            err.to_string(),
            "Docker answered GET /_ping with HTTP 500: boom"
        );
    }

    #[tokio::test]
    async fn container_reads_running_and_env_from_inspect() {
        let env = r#"["PATH=/bin","BLOCKWATCH_CHECKPOINT_SIGNAL=SIGUSR1","EMPTY="]"#;
        let fake = FakeDocker::start(json("200 OK", &inspect_body(true, env)));
        let facts = fake.engine().container(ID).await.unwrap();
        assert_eq!(
            fake.request_lines(),
            [format!("GET /containers/{ID}/json HTTP/1.1")]
        );
        assert_eq!(facts.id, ID);
        assert!(facts.running);
        assert_eq!(
            facts.env_value("BLOCKWATCH_CHECKPOINT_SIGNAL"),
            Some("SIGUSR1")
        );
        assert_eq!(facts.env_value("EMPTY"), Some(""));
        // A prefix of a name is not the name.
        assert_eq!(facts.env_value("BLOCKWATCH_CHECKPOINT"), None);
        assert_eq!(facts.env_value("HOME"), None);
    }

    #[tokio::test]
    async fn container_with_null_env_has_none() {
        let fake = FakeDocker::start(json("200 OK", &inspect_body(false, "null")));
        let facts = fake.engine().container(ID).await.unwrap();
        assert!(!facts.running);
        assert!(facts.env.is_empty());
    }

    #[tokio::test]
    async fn container_404_is_no_such_container() {
        let fake = FakeDocker::start(json(
            "404 Not Found",
            &format!(r#"{{"message":"No such container: {ID}"}}"#),
        ));
        let err = fake.engine().container(ID).await.unwrap_err();
        assert!(
            matches!(&err, DockerError::NoSuchContainer { id } if id == ID),
            "{err:?}"
        );
        assert!(!err.is_unreachable());
    }

    #[tokio::test]
    async fn container_answer_that_is_not_inspect_json_is_refused() {
        let fake = FakeDocker::start(json("200 OK", r#"{"Id":"x"}"#));
        let err = fake.engine().container(ID).await.unwrap_err();
        assert!(matches!(err, DockerError::NotJson { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn kill_posts_the_signal_and_takes_204() {
        let fake = FakeDocker::start(http("204 No Content", "text/plain", ""));
        fake.engine().kill(ID, "SIGUSR1").await.unwrap();
        assert_eq!(
            fake.request_lines(),
            [format!(
                "POST /containers/{ID}/kill?signal=SIGUSR1 HTTP/1.1"
            )]
        );
    }

    #[tokio::test]
    async fn kill_409_is_not_running() {
        let fake = FakeDocker::start(json(
            "409 Conflict",
            &format!(
                r#"{{"message":"Cannot kill container: {ID}: Container {ID} is not running"}}"#
            ),
        ));
        let err = fake.engine().kill(ID, "SIGUSR1").await.unwrap_err();
        assert!(
            matches!(&err, DockerError::NotRunning { id } if id == ID),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn kill_404_is_no_such_container() {
        let fake = FakeDocker::start(json(
            "404 Not Found",
            &format!(r#"{{"message":"No such container: {ID}"}}"#),
        ));
        let err = fake.engine().kill(ID, "SIGUSR1").await.unwrap_err();
        assert!(
            matches!(err, DockerError::NoSuchContainer { .. }),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn bad_ids_and_signals_never_reach_docker() {
        let fake = FakeDocker::start(http("204 No Content", "text/plain", ""));
        let engine = fake.engine();
        let too_long = "a".repeat(65);
        for id in [
            "",
            "../../_ping",
            "ABCDEF",
            "job-1",
            "4c01 db",
            too_long.as_str(),
        ] {
            let err = engine.kill(id, "SIGUSR1").await.unwrap_err();
            assert!(matches!(err, DockerError::BadId { .. }), "{id}: {err:?}");
            let err = engine.container(id).await.unwrap_err();
            assert!(matches!(err, DockerError::BadId { .. }), "{id}: {err:?}");
        }
        for signal in ["", "sigusr1", "SIGUSR1&signal=SIGKILL", "SIG USR1", "9;"] {
            let err = engine.kill(ID, signal).await.unwrap_err();
            assert!(
                matches!(err, DockerError::BadSignal { .. }),
                "{signal}: {err:?}"
            );
        }
        assert_eq!(fake.request_lines(), Vec::<String>::new());
        // A short id is an id.
        engine.kill("4c01db0b339c", "SIGUSR1").await.unwrap();
        assert_eq!(fake.request_lines().len(), 1);
    }

    #[tokio::test]
    async fn an_answer_over_the_cap_is_refused() {
        let big = format!(r#"{{"message":"{}"}}"#, "x".repeat(BODY_CAP));
        let fake = FakeDocker::start(json("200 OK", &big));
        let err = fake.engine().container(ID).await.unwrap_err();
        assert!(matches!(err, DockerError::TooLarge { .. }), "{err:?}");
        assert!(err.to_string().contains("larger than 256 KiB"), "{err}");
    }

    #[tokio::test]
    async fn an_answer_at_the_cap_is_read() {
        let padding = BODY_CAP - inspect_body(true, "[]").len() - r#","P":"""#.len();
        let body = inspect_body(true, "[]").replacen(
            r#""Path":"sh","#,
            &format!(r#""Path":"sh","P":"{}","#, "x".repeat(padding)),
            1,
        );
        assert_eq!(body.len(), BODY_CAP);
        let fake = FakeDocker::start(json("200 OK", &body));
        assert!(fake.engine().container(ID).await.unwrap().running);
    }

    #[tokio::test]
    async fn a_daemon_that_never_answers_times_out() {
        let fake = FakeDocker::start(None);
        let engine = fake.engine();
        let started = std::time::Instant::now();
        let err = engine.ping().await.unwrap_err();
        let took = started.elapsed();
        assert!(matches!(err, DockerError::Timeout { .. }), "{err:?}");
        assert!(err.is_unreachable());
        // Bounded by the timeout, with a margin for a loaded machine.
        assert!(took >= REQUEST_TIMEOUT, "{took:?}");
        assert!(took < REQUEST_TIMEOUT * 5, "{took:?}");
        assert_eq!(fake.request_lines(), ["GET /_ping HTTP/1.1"]);
    }

    #[tokio::test]
    async fn an_absent_socket_is_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("docker.sock");
        let host = format!("unix://{}", socket.display());
        let engine = DockerEngine::from_docker_host(Some(&host)).unwrap();
        let err = engine.kill(ID, "SIGUSR1").await.unwrap_err();
        assert!(
            matches!(&err, DockerError::Unreachable { endpoint, .. } if *endpoint == host),
            "{err:?}"
        );
        assert!(err.is_unreachable());
        assert_eq!(
            err.to_string(),
            format!("Docker cannot be reached at {host}: no socket there (is Docker running?)")
        );
    }

    #[tokio::test]
    async fn a_socket_nobody_listens_on_is_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("docker.sock");
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        let engine =
            DockerEngine::from_docker_host(Some(&format!("unix://{}", socket.display()))).unwrap();
        let err = engine.ping().await.unwrap_err();
        assert!(err.is_unreachable(), "{err:?}");
        assert!(
            err.to_string()
                .ends_with(": connection refused (is Docker running?)"),
            "{err}"
        );
    }

    #[test]
    fn docker_host_follows_dockers_convention() {
        for unset in [None, Some("")] {
            let engine = DockerEngine::from_docker_host(unset).unwrap();
            assert_eq!(engine.endpoint(), "unix:///var/run/docker.sock");
            assert_eq!(engine.socket, Path::new(DEFAULT_DOCKER_SOCKET));
        }
        let engine =
            DockerEngine::from_docker_host(Some("unix:///run/user/1000/docker.sock")).unwrap();
        assert_eq!(engine.endpoint(), "unix:///run/user/1000/docker.sock");
        assert_eq!(engine.socket, Path::new("/run/user/1000/docker.sock"));
        for value in [
            "tcp://127.0.0.1:2375",
            "unix://docker.sock",
            "unix://",
            "/var/run/docker.sock",
            "npipe:////./pipe/docker_engine",
            "ssh://host",
        ] {
            let err = DockerEngine::from_docker_host(Some(value)).unwrap_err();
            assert!(
                matches!(&err, DockerError::UnsupportedHost { value: v } if v == value),
                "{value}: {err:?}"
            );
            assert!(err.is_unreachable());
            assert!(err.to_string().contains(value), "{err}");
        }
    }
}
