//! Drain events POSTed to `webhook_url`, in the background: a slow or failing
//! receiver never delays the drain. Deliveries in flight are tracked, so that
//! shutdown and power-off wait for them a little and say which were dropped.

use std::time::Duration;

use crate::host::entropy::random_u64;
use blockwatch_core::backoff::Backoff;

const ATTEMPTS: u32 = 4;
const TIMEOUT: Duration = Duration::from_secs(5);
/// Retries wait up to 0.5 s, 1 s, then 2 s, jittered: receivers behind one
/// endpoint are not hit by a fleet in lockstep.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The URL as it may be logged: scheme and host only, since paths, queries
/// and user info often carry tokens.
pub fn redacted(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(parsed) => format!(
            "{}://{}/…",
            parsed.scheme(),
            parsed.host_str().unwrap_or("?")
        ),
        Err(_) => "<invalid URL>".to_owned(),
    }
}

/// Webhook deliveries still in flight, so that shutdown and power-off can
/// wait for them (bounded) instead of losing them.
#[derive(Debug)]
pub struct Deliveries {
    /// The agent's one HTTP client; each delivery has its own timeout.
    client: reqwest::Client,
    pending: Vec<Delivery>,
}

#[derive(Debug)]
struct Delivery {
    event: String,
    shown: String,
    task: tokio::task::JoinHandle<()>,
}

impl Deliveries {
    pub fn new(client: reqwest::Client) -> Self {
        Self {
            client,
            pending: Vec::new(),
        }
    }

    /// Sends `event` on a spawned task with a timeout and retries with backoff.
    pub fn post(&mut self, url: String, event: serde_json::Value) {
        self.pending.retain(|d| !d.task.is_finished());
        let name = event["event"].as_str().unwrap_or("event").to_owned();
        let shown = redacted(&url);
        let task = tokio::spawn(deliver(self.client.clone(), url, event));
        self.pending.push(Delivery {
            event: name,
            shown,
            task,
        });
    }

    /// Deliveries not finished yet.
    pub fn in_flight(&mut self) -> usize {
        self.pending.retain(|d| !d.task.is_finished());
        self.pending.len()
    }

    /// Waits up to `within` for every delivery to finish; the ones still
    /// running then are dropped and logged (with the redacted URL). `why`
    /// says what is about to happen (`blockwatch is stopping`).
    /// Returns how many were dropped.
    pub async fn settle(&mut self, within: Duration, why: &str) -> usize {
        if self.in_flight() == 0 {
            return 0;
        }
        log::info!(
            "{why}: waiting up to {} for {} webhook delivery(ies)",
            humantime::format_duration(within),
            self.pending.len()
        );
        let deadline = tokio::time::Instant::now() + within;
        for delivery in &mut self.pending {
            // A task that failed or was aborted has nothing left to wait for.
            let _ = tokio::time::timeout_at(deadline, &mut delivery.task).await;
        }
        let mut dropped = 0;
        for delivery in self.pending.drain(..) {
            if !delivery.task.is_finished() {
                delivery.task.abort();
                dropped += 1;
                log::warn!(
                    "webhook {}: dropped {} undelivered: {why} and it did not finish within {}",
                    delivery.shown,
                    delivery.event,
                    humantime::format_duration(within)
                );
            }
        }
        dropped
    }
}

impl Deliveries {
    /// Drops every delivery in flight at once, logging each.
    pub fn abandon(&mut self, why: &str) {
        for delivery in self.pending.drain(..) {
            if !delivery.task.is_finished() {
                delivery.task.abort();
                log::warn!(
                    "webhook {}: dropped {} undelivered: {why}",
                    delivery.shown,
                    delivery.event
                );
            }
        }
    }
}

async fn deliver(client: reqwest::Client, url: String, event: serde_json::Value) {
    let shown = redacted(&url);
    let body = event.to_string();
    let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
    for attempt in 1..=ATTEMPTS {
        let sent = client
            .post(&url)
            .timeout(TIMEOUT)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone())
            .send()
            .await;
        let outcome = match sent {
            Ok(response) if response.status().is_success() => {
                log::info!(
                    "webhook {shown}: delivered {} (attempt {attempt})",
                    event["event"]
                );
                return;
            }
            Ok(response) => format!("HTTP {}", response.status().as_u16()),
            // Without the URL: reqwest's error text includes it.
            Err(err) => error_chain(&err.without_url()),
        };
        if attempt == ATTEMPTS {
            log::warn!(
                "webhook {shown}: giving up on {} after {attempt} attempts: {outcome}",
                event["event"]
            );
            return;
        }
        let wait = backoff.failed(std::time::Instant::now(), random_u64());
        // Whole milliseconds: the jitter's nanoseconds say nothing to a reader.
        let wait = Duration::from_millis(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
        log::info!(
            "webhook {shown}: attempt {attempt} failed ({outcome}); retrying in {}",
            humantime::format_duration(wait)
        );
        tokio::time::sleep(wait).await;
    }
}

/// An error and its causes on one line (reqwest's own text is only
/// "error sending request").
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(err);
    while let Some(e) = current {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = e.source();
    }
    parts.join(": ").replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_keeps_only_scheme_and_host() {
        assert_eq!(
            redacted("https://user:pw@hooks.example/T000/B000/secret?token=x"),
            "https://hooks.example/…"
        );
        assert_eq!(redacted("not a url"), "<invalid URL>");
    }
}
