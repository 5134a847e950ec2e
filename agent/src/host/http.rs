//! The one HTTP client for the ECS agent's introspection API and the
//! webhook: reqwest on rustls with ring, the TLS stack the AWS SDK clients
//! use too (`blockwatch_aws::https_client`), so only one is linked.

/// Builds the client; each request sets its own timeout.
pub fn client() -> Result<reqwest::Client, reqwest::Error> {
    // reqwest without a built-in provider takes the process default; an
    // `Err` only says one is installed already (a second call), which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().build()
}
