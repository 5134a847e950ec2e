//! Instance metadata through aws-config's IMDS client (IMDSv2 only).
//! (About 410 lines with its tests against the simulator, kept beside the
//! client they check.)
//!
//! One method per datum. A 404 means "absent" and becomes `None`; only a
//! service that does not answer is an error.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use aws_config::imds::client::error::{ImdsError, TokenError};
use aws_sdk_batch::config::http::HttpResponse;
use aws_sdk_batch::error::SdkError;
use serde::Deserialize;
use time::OffsetDateTime;

use super::CallError;
use blockwatch_core::tags::TAG_KEYS;

const IDENTITY_DOCUMENT: &str = "/latest/dynamic/instance-identity/document";
const TAGS: &str = "/latest/meta-data/tags/instance";

/// The fields of the instance identity document that blockwatch uses.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityDocument {
    pub instance_id: String,
    pub region: String,
    pub availability_zone: String,
    pub instance_type: String,
    pub account_id: Option<String>,
    /// When the instance was launched; a lease duration counts from here.
    #[serde(with = "time::serde::rfc3339")]
    pub pending_time: OffsetDateTime,
}

pub trait InstanceMetadata {
    fn identity(&self) -> impl Future<Output = Result<IdentityDocument, CallError>> + Send;

    /// The `blockwatch:*` instance tags, or `None` when tags are not exposed
    /// in IMDS (the instance was launched without `InstanceMetadataTags`).
    fn tags(
        &self,
    ) -> impl Future<Output = Result<Option<BTreeMap<String, String>>, CallError>> + Send;
}

/// The real IMDS, at `AWS_EC2_METADATA_SERVICE_ENDPOINT` or the default address.
///
/// Clones share one client (one session token) and one cached identity
/// document, which never changes for the life of an instance. When IMDS has
/// forgotten the cached token, [`Imds::renewed`] gives a fresh client.
#[derive(Debug, Clone)]
pub struct Imds {
    client: aws_config::imds::Client,
    identity: Arc<tokio::sync::OnceCell<IdentityDocument>>,
    recipe: Recipe,
}

/// How the client was built, so that a fresh one can be built alike.
#[derive(Debug, Clone, Default)]
struct Recipe {
    /// An explicit endpoint; `None` follows the SDK's resolution.
    endpoint: Option<String>,
    /// Attempts per request; `None` keeps the SDK's default (4).
    max_attempts: Option<u32>,
}

impl Recipe {
    fn build(&self) -> Result<aws_config::imds::Client, String> {
        let http = aws_smithy_http_client::Builder::new().build_http();
        let config = aws_config::provider_config::ProviderConfig::default().with_http_client(http);
        let mut builder = aws_config::imds::Client::builder().configure(&config);
        if let Some(endpoint) = &self.endpoint {
            builder = builder
                .endpoint(endpoint.as_str())
                .map_err(|e| format!("IMDS endpoint {endpoint:?}: {e}"))?;
        }
        if let Some(attempts) = self.max_attempts {
            builder = builder.max_attempts(attempts);
        }
        Ok(builder.build())
    }

    /// The endpoint as the SDK resolves it, for messages.
    fn shown_endpoint(&self) -> String {
        if let Some(endpoint) = &self.endpoint {
            return endpoint.clone();
        }
        blockwatch_aws::imds_endpoint_from_env()
    }
}

/// An IMDS request that failed.
#[derive(Debug)]
pub struct ImdsFault {
    pub error: CallError,
    /// IMDS refused our session token (HTTP 401): a fresh client fixes it.
    pub token_refused: bool,
}

impl Imds {
    pub fn new() -> Self {
        Self::from_recipe(Recipe::default())
    }

    /// For `run`, which polls every second: the next poll is the retry, so
    /// each request is tried twice at most and a failing IMDS is seen soon.
    pub fn for_polling() -> Self {
        Self::from_recipe(Recipe {
            endpoint: None,
            max_attempts: Some(2),
        })
    }

    fn from_recipe(recipe: Recipe) -> Self {
        // Without an explicit endpoint, building cannot fail.
        let client = recipe
            .build()
            .unwrap_or_else(|_| aws_config::imds::Client::builder().build());
        Self {
            client,
            identity: Arc::default(),
            recipe,
        }
    }

    /// An IMDS at `endpoint` (a URL) instead of the SDK's resolution.
    pub fn with_endpoint(endpoint: &str) -> Result<Self, String> {
        let recipe = Recipe {
            endpoint: Some(endpoint.to_owned()),
            max_attempts: None,
        };
        Ok(Self {
            client: recipe.build()?,
            identity: Arc::default(),
            recipe,
        })
    }

    /// A fresh client (no cached token) for the same endpoint, sharing the
    /// cached identity document. Cheap: nothing is asked until it is used.
    pub fn renewed(&self) -> Self {
        Self {
            client: self.recipe.build().unwrap_or_else(|_| self.client.clone()),
            identity: Arc::clone(&self.identity),
            recipe: self.recipe.clone(),
        }
    }

    /// Where IMDS is, as shown in messages.
    pub fn endpoint(&self) -> String {
        self.recipe.shown_endpoint()
    }

    /// The underlying client, shared with the credential chain.
    pub fn client(&self) -> aws_config::imds::Client {
        self.client.clone()
    }

    /// GETs `path`; `Ok(None)` on 404.
    pub async fn get_optional(&self, path: &str) -> Result<Option<String>, CallError> {
        self.get(path).await.map_err(|fault| fault.error)
    }

    /// GETs `path`; `Ok(None)` on 404; a failure says whether it was our token.
    pub async fn get(&self, path: &str) -> Result<Option<String>, ImdsFault> {
        match self.client.get(path).await {
            Ok(body) => Ok(Some(body.into())),
            Err(ImdsError::ErrorResponse(response))
                if response.response().status().as_u16() == 404 =>
            {
                Ok(None)
            }
            Err(err) => Err(ImdsFault {
                token_refused: matches!(&err, ImdsError::ErrorResponse(r) if r.response().status().as_u16() == 401),
                error: CallError::Imds {
                    path: path.to_owned(),
                    detail: describe(&err, &self.endpoint()),
                },
            }),
        }
    }
}

impl Default for Imds {
    fn default() -> Self {
        Self::new()
    }
}

/// One sentence for an IMDS failure: the cause and the endpoint, never the
/// SDK's debug dump of the response.
fn describe(err: &ImdsError, endpoint: &str) -> String {
    let detail = match err {
        ImdsError::ErrorResponse(response) => {
            format!(
                "{} from IMDS at {endpoint}",
                http_status(response.response().status().as_u16())
            )
        }
        ImdsError::FailedToLoadToken(failure) => {
            let cause = std::error::Error::source(err)
                .and_then(|e| e.downcast_ref::<SdkError<TokenError, HttpResponse>>())
                .map_or_else(|| "no answer".to_owned(), token_failure);
            let hint = if failure.is_dispatch_failure() {
                ""
            } else {
                " (is IMDSv2 enabled, and the hop limit high enough?)"
            };
            format!(
                "no IMDSv2 session token from IMDS at {endpoint}: PUT {TOKEN_PATH} {cause}{hint}"
            )
        }
        other => format!("cannot reach IMDS at {endpoint}: {}", causes(other)),
    };
    detail.replace(['\n', '\r'], " ")
}

const TOKEN_PATH: &str = "/latest/api/token";

fn token_failure(err: &SdkError<TokenError, HttpResponse>) -> String {
    match err {
        SdkError::ServiceError(service) => format!(
            "answered {}: {}",
            http_status(service.raw().status().as_u16()),
            service.err()
        ),
        SdkError::TimeoutError(_) => "got no answer in time".to_owned(),
        other => format!("failed: {}", causes(other)),
    }
}

/// `HTTP 500 Internal Server Error`.
fn http_status(code: u16) -> String {
    let reason = match code {
        400 => " Bad Request",
        401 => " Unauthorized (IMDS does not know our session token)",
        403 => " Forbidden",
        405 => " Method Not Allowed",
        429 => " Too Many Requests",
        500 => " Internal Server Error",
        502 => " Bad Gateway",
        503 => " Service Unavailable",
        504 => " Gateway Timeout",
        _ => "",
    };
    format!("HTTP {code}{reason}")
}

/// The messages of an error and its sources, without repeats or the SDK's
/// generic wrappers ("dispatch failure", "io error").
fn causes(err: &(dyn std::error::Error + 'static)) -> String {
    const GENERIC: &[&str] = &[
        "dispatch failure",
        "io error",
        "other",
        "an unexpected error occurred communicating with IMDS",
        "an IO error occurred communicating with IMDS",
        "failed to load IMDS session token",
        "timeout",
        "response error",
    ];
    let found = super::causes_except(err, GENERIC);
    if !found.is_empty() {
        return found;
    }
    let timed_out = super::chain(err).any(|e| {
        let text = e.to_string();
        text.contains("timeout") || text.contains("timed out")
    });
    if timed_out {
        "no answer in time".to_owned()
    } else {
        "connection failed".to_owned()
    }
}

impl InstanceMetadata for Imds {
    async fn identity(&self) -> Result<IdentityDocument, CallError> {
        self.identity
            .get_or_try_init(|| self.fetch_identity())
            .await
            .cloned()
    }

    async fn tags(&self) -> Result<Option<BTreeMap<String, String>>, CallError> {
        // The listing tells "tags disabled" (404) from "tag absent", and lets
        // us fetch only the keys that exist.
        let Some(listing) = self.get_optional(TAGS).await? else {
            return Ok(None);
        };
        let mut tags = BTreeMap::new();
        for key in listing
            .lines()
            .map(str::trim)
            .filter(|key| TAG_KEYS.contains(key))
        {
            if let Some(value) = self.get_optional(&format!("{TAGS}/{key}")).await? {
                tags.insert(key.to_owned(), value);
            }
        }
        Ok(Some(tags))
    }
}

impl Imds {
    /// The identity document as IMDS serves it now, not the cached one: its
    /// `pendingTime` changes when the instance is stopped and started again.
    pub async fn fresh_identity(&self) -> Result<IdentityDocument, CallError> {
        self.fetch_identity().await
    }

    async fn fetch_identity(&self) -> Result<IdentityDocument, CallError> {
        let text = self
            .get_optional(IDENTITY_DOCUMENT)
            .await?
            .ok_or_else(|| CallError::Imds {
                path: IDENTITY_DOCUMENT.to_owned(),
                detail: "not found (HTTP 404)".to_owned(),
            })?;
        serde_json::from_str(&text).map_err(|e| CallError::Imds {
            path: IDENTITY_DOCUMENT.to_owned(),
            detail: format!("unreadable identity document: {e}"),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use blockwatch_testkit::imds::{Fault, Faults, ImdsSimulator, InstanceState};

    use super::*;

    const SPOT: &str = "/latest/meta-data/spot/instance-action";

    /// One attempt per request: no retry backoff to wait for.
    fn client(sim: &ImdsSimulator) -> Imds {
        Imds::from_recipe(Recipe {
            endpoint: Some(sim.endpoint()),
            max_attempts: Some(1),
        })
    }

    async fn failure(faults: Faults) -> (ImdsFault, String) {
        let sim = ImdsSimulator::start(InstanceState::default()).unwrap();
        sim.set_faults(faults);
        let imds = client(&sim);
        let fault = imds.get(SPOT).await.expect_err("a fault");
        (fault, sim.endpoint())
    }

    #[tokio::test]
    async fn failures_read_as_one_sentence_with_the_path_and_the_endpoint() {
        let (fault, endpoint) = failure(Faults {
            paths: [("*".to_owned(), Fault::Status(500))].into(),
            ..Faults::default()
        })
        .await;
        assert_eq!(
            fault.error.to_string(),
            format!(
                "instance metadata {SPOT}: HTTP 500 Internal Server Error from IMDS at {endpoint}"
            )
        );
        assert!(!fault.token_refused);

        let (fault, endpoint) = failure(Faults {
            token: Some(Fault::Status(403)),
            ..Faults::default()
        })
        .await;
        let text = fault.error.to_string();
        assert!(
            text.starts_with(&format!(
                "instance metadata {SPOT}: no IMDSv2 session token from IMDS at {endpoint}: PUT /latest/api/token answered HTTP 403 Forbidden"
            )),
            "{text}"
        );

        let (fault, endpoint) = failure(Faults {
            all: Some(Fault::Gone),
            ..Faults::default()
        })
        .await;
        let text = fault.error.to_string();
        assert!(text.contains(&endpoint), "{text}");
        for dump in ["SdkBody", "{ ", "DispatchFailure"] {
            assert!(!text.contains(dump), "{text}");
        }
        assert!(!text.contains('\n'));
    }

    #[tokio::test]
    async fn a_forgotten_token_is_told_apart_and_a_renewed_client_heals_it() {
        let sim = ImdsSimulator::start(InstanceState::default()).unwrap();
        let imds = client(&sim);
        assert_eq!(imds.get(SPOT).await.unwrap(), None);
        sim.expire_tokens();
        let fault = imds.get(SPOT).await.expect_err("the cached token is gone");
        assert!(fault.token_refused, "{}", fault.error);
        assert!(
            imds.get(SPOT).await.is_err(),
            "aws-config keeps the forgotten token"
        );
        assert_eq!(imds.renewed().get(SPOT).await.unwrap(), None);
    }
}
