//! Drain events POSTed to `webhook_url`, in the background: a slow or failing
//! receiver never delays the drain.

use std::time::Duration;

const ATTEMPTS: u32 = 4;
const TIMEOUT: Duration = Duration::from_secs(5);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

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

/// Sends `event` on a spawned task with a timeout and retries with backoff.
pub fn post(url: String, event: serde_json::Value) {
    tokio::spawn(async move {
        let shown = redacted(&url);
        let client = match reqwest::Client::builder().timeout(TIMEOUT).build() {
            Ok(client) => client,
            Err(err) => {
                log::warn!("webhook {shown}: cannot build an HTTP client: {err}");
                return;
            }
        };
        let body = event.to_string();
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=ATTEMPTS {
            let sent = client
                .post(&url)
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
                Err(err) => format!("{}", err.without_url()),
            };
            if attempt == ATTEMPTS {
                log::warn!(
                    "webhook {shown}: giving up on {} after {attempt} attempts: {outcome}",
                    event["event"]
                );
                return;
            }
            log::info!(
                "webhook {shown}: attempt {attempt} failed ({outcome}); retrying in {backoff:?}"
            );
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    });
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
