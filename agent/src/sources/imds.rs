//! Instance metadata through aws-config's IMDS client (IMDSv2 only).
//!
//! One method per datum. A 404 means "absent" and becomes `None`; only a
//! service that does not answer is an error.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use aws_config::imds::client::error::ImdsError;
use serde::Deserialize;
use time::OffsetDateTime;

use super::SourceError;
use crate::core::config::TAG_KEYS;

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
    fn identity(&self) -> impl Future<Output = Result<IdentityDocument, SourceError>> + Send;

    /// The `blockwatch:*` instance tags, or `None` when tags are not exposed
    /// in IMDS (the instance was launched without `InstanceMetadataTags`).
    fn tags(
        &self,
    ) -> impl Future<Output = Result<Option<BTreeMap<String, String>>, SourceError>> + Send;
}

/// The real IMDS, at `AWS_EC2_METADATA_SERVICE_ENDPOINT` or the default address.
///
/// Clones share one client (one session token) and one cached identity
/// document, which never changes for the life of an instance.
#[derive(Debug, Clone)]
pub struct Imds {
    client: aws_config::imds::Client,
    identity: Arc<tokio::sync::OnceCell<IdentityDocument>>,
}

fn plain_http_builder() -> aws_config::imds::client::Builder {
    let http = aws_smithy_http_client::Builder::new().build_http();
    let config = aws_config::provider_config::ProviderConfig::default().with_http_client(http);
    aws_config::imds::Client::builder().configure(&config)
}

impl Imds {
    pub fn new() -> Self {
        Self {
            client: plain_http_builder().build(),
            identity: Arc::default(),
        }
    }

    /// An IMDS at `endpoint` (a URL) instead of the SDK's resolution.
    pub fn with_endpoint(endpoint: &str) -> Result<Self, String> {
        let builder = plain_http_builder()
            .endpoint(endpoint)
            .map_err(|e| e.to_string())?;
        Ok(Self {
            client: builder.build(),
            identity: Arc::default(),
        })
    }

    /// The underlying client, shared with the credential chain.
    pub fn client(&self) -> aws_config::imds::Client {
        self.client.clone()
    }

    /// GETs `path`; `Ok(None)` on 404.
    pub async fn get_optional(&self, path: &str) -> Result<Option<String>, SourceError> {
        match self.client.get(path).await {
            Ok(body) => Ok(Some(body.into())),
            Err(ImdsError::ErrorResponse(response))
                if response.response().status().as_u16() == 404 =>
            {
                Ok(None)
            }
            Err(err) => Err(imds_error(path, &err)),
        }
    }
}

impl Default for Imds {
    fn default() -> Self {
        Self::new()
    }
}

fn imds_error(path: &str, err: &ImdsError) -> SourceError {
    let detail = match err {
        ImdsError::ErrorResponse(response) => {
            format!("HTTP {}", response.response().status().as_u16())
        }
        other => aws_sdk_batch::error::DisplayErrorContext(other).to_string(),
    };
    SourceError::Imds {
        path: path.to_owned(),
        detail: detail.replace('\n', " "),
    }
}

impl InstanceMetadata for Imds {
    async fn identity(&self) -> Result<IdentityDocument, SourceError> {
        self.identity
            .get_or_try_init(|| self.fetch_identity())
            .await
            .cloned()
    }

    async fn tags(&self) -> Result<Option<BTreeMap<String, String>>, SourceError> {
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
    async fn fetch_identity(&self) -> Result<IdentityDocument, SourceError> {
        let text =
            self.get_optional(IDENTITY_DOCUMENT)
                .await?
                .ok_or_else(|| SourceError::Imds {
                    path: IDENTITY_DOCUMENT.to_owned(),
                    detail: "not found (HTTP 404)".to_owned(),
                })?;
        serde_json::from_str(&text).map_err(|e| SourceError::Imds {
            path: IDENTITY_DOCUMENT.to_owned(),
            detail: format!("unreadable identity document: {e}"),
        })
    }
}
