//! HTTPS peers for tests, so that tests do real TLS handshakes through the
//! shipped clients: a throwaway CA with a server certificate for 127.0.0.1
//! (made by `tls.py` with the moto venv's `cryptography`), and an HTTPS
//! webhook receiver. moto itself serves HTTPS with
//! [`MotoServer::start_tls`](crate::moto::MotoServer::start_tls).
//!
//! The binaries under test trust the CA through `SSL_CERT_FILE`
//! ([`TestCa::ca_file`]): rustls-native-certs, behind both the SDK's client
//! and reqwest's platform verifier on Linux, then loads that file instead of
//! the system's store.

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_batch::config::SharedHttpClient;

/// The helper script, run as `python -c` so that no file has to be found.
const SCRIPT: &str = include_str!("tls.py");

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0} not found: run tests/setup.sh (it creates the venv with moto and cryptography)")]
    NoPython(PathBuf),
    #[error("creating test certificates in {dir}: {detail}")]
    Certificates { dir: PathBuf, detail: String },
    #[error("HTTPS receiver did not start: {0}")]
    Receiver(String),
}

fn python() -> Result<PathBuf, TlsError> {
    let program = crate::moto::venv().join("bin/python");
    if program.exists() {
        Ok(program)
    } else {
        Err(TlsError::NoPython(program))
    }
}

/// A scratch path of this process's own under the temp dir.
fn scratch(what: &str) -> PathBuf {
    static MADE: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "blockwatch-{what}-{}-{}",
        std::process::id(),
        MADE.fetch_add(1, Ordering::Relaxed)
    ))
}

/// A CA made for one test and a server certificate it signed for
/// `127.0.0.1` (IP SAN) and `localhost`; removed when dropped.
#[derive(Debug)]
pub struct TestCa {
    dir: PathBuf,
}

impl TestCa {
    pub fn create() -> Result<Self, TlsError> {
        let dir = scratch("tls");
        let failed = |detail: String| TlsError::Certificates {
            dir: dir.clone(),
            detail,
        };
        std::fs::create_dir_all(&dir).map_err(|e| failed(e.to_string()))?;
        let ca = Self { dir: dir.clone() };
        let output = Command::new(python()?)
            .args(["-c", SCRIPT, "certs"])
            .arg(&dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| failed(e.to_string()))?;
        if !output.status.success() {
            return Err(failed(format!(
                "tls.py exited with {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        Ok(ca)
    }

    /// The CA certificate (PEM), for `SSL_CERT_FILE`.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The server certificate (PEM), signed by the CA.
    pub fn cert_file(&self) -> PathBuf {
        self.dir.join("server.pem")
    }

    /// The server certificate's private key (PEM, PKCS#8).
    pub fn key_file(&self) -> PathBuf {
        self.dir.join("server.key")
    }

    /// An SDK HTTPS client (rustls on ring) that trusts this CA only: the
    /// test kit seeds moto over TLS with it, whatever the host trusts.
    pub fn https_client(&self) -> Result<SharedHttpClient, TlsError> {
        use aws_smithy_http_client::tls::{
            rustls_provider::CryptoMode, Provider, TlsContext, TrustStore,
        };
        let pem = std::fs::read(self.ca_file()).map_err(|e| TlsError::Certificates {
            dir: self.dir.clone(),
            detail: format!("reading ca.pem: {e}"),
        })?;
        let context = TlsContext::builder()
            .with_trust_store(TrustStore::empty().with_pem_certificate(pem))
            .build()
            .map_err(|e| TlsError::Certificates {
                dir: self.dir.clone(),
                detail: format!("TLS context: {e}"),
            })?;
        Ok(aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .tls_context(context)
            .build_https())
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A server process the test kit started, with its log and the file it
/// records requests in: dropped, it is stopped (by PID) and both files go.
#[derive(Debug)]
pub(crate) struct ServerProcess {
    child: Child,
    pub(crate) log: PathBuf,
    pub(crate) record: PathBuf,
}

impl ServerProcess {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // Our own child, by PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
        let _ = std::fs::remove_file(&self.record);
    }
}

/// Starts `command` with its output in `log` and waits (up to 120 s, for a
/// cold machine) until `listening(log)` gives an address that accepts
/// connections. Returns the process (which records in `record`) and the
/// address.
pub(crate) fn spawn_listening(
    mut command: Command,
    log: PathBuf,
    record: PathBuf,
    listening: impl Fn(&str) -> Option<SocketAddr>,
) -> Result<(ServerProcess, SocketAddr), String> {
    let log_file = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let log_err = log_file
        .try_clone()
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err)
        .spawn()
        .map_err(|e| format!("{:?}: {e}", command.get_program()))?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            let output = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!("exited with {status}: {output}"));
        }
        let output = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(addr) = listening(&output) {
            if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
                return Ok((ServerProcess { child, log, record }, addr));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Our own child, by PID.
    let _ = child.kill();
    let _ = child.wait();
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    Err(format!("not listening after 120 s: {output}"))
}

/// One POST the receiver answered.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Posted {
    pub path: String,
    pub body: String,
}

/// An HTTPS server on 127.0.0.1 with the CA's server certificate that
/// answers 200 to every POST and records it: a webhook receiver behind TLS.
/// Stopped (by PID) when dropped.
#[derive(Debug)]
pub struct HttpsReceiver {
    process: ServerProcess,
    addr: SocketAddr,
}

impl HttpsReceiver {
    pub fn start(ca: &TestCa) -> Result<Self, TlsError> {
        let log = scratch("https-receiver").with_extension("log");
        let record = log.with_extension("posts.jsonl");
        let mut command = Command::new(python()?);
        command
            .args(["-c", SCRIPT, "receiver"])
            .arg(ca.cert_file())
            .arg(ca.key_file())
            .arg(&record);
        let (process, addr) = spawn_listening(command, log, record, |output| {
            // Complete lines only: a line still being written could hold half a port.
            output
                .split_inclusive('\n')
                .filter(|line| line.ends_with('\n'))
                .find_map(|line| line.strip_prefix("listening on "))
                .and_then(|addr| addr.trim().parse().ok())
        })
        .map_err(TlsError::Receiver)?;
        Ok(Self { process, addr })
    }

    /// `https://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    /// Every POST answered so far, in order.
    pub fn received(&self) -> Vec<Posted> {
        std::fs::read_to_string(&self.process.record)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }
}
