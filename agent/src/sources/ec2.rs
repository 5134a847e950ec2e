//! EC2 lookups: `ec2:DescribeTags` (the fallback when tags are not exposed in
//! IMDS), EC2's own end dates (legacy spot block, Capacity Block), and the
//! instance's shutdown behaviour.

use std::collections::BTreeMap;
use std::future::Future;

use aws_sdk_ec2::types::Filter;

use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};

use super::aws::{classify_at, endpoint_of, Aws};
use super::CallError;
use blockwatch_core::deadline::{is_capacity_block, legacy_spot_block_end};
use blockwatch_core::tags::TAG_KEYS;

pub trait TagDirectory {
    /// The `blockwatch:*` tags of `instance_id`.
    fn instance_tags(
        &self,
        instance_id: &str,
    ) -> impl Future<Output = Result<BTreeMap<String, String>, CallError>> + Send;
}

impl TagDirectory for Aws {
    async fn instance_tags(
        &self,
        instance_id: &str,
    ) -> Result<BTreeMap<String, String>, CallError> {
        let client = aws_sdk_ec2::Client::new(self.config().await?);
        let filters = [
            Filter::builder()
                .name("resource-id")
                .values(instance_id)
                .build(),
            Filter::builder()
                .name("key")
                .set_values(Some(TAG_KEYS.map(String::from).to_vec()))
                .build(),
        ];
        let mut tags = BTreeMap::new();
        let mut pages = client
            .describe_tags()
            .set_filters(Some(filters.to_vec()))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| failed(&client, "ec2:DescribeTags", &e))?;
            for tag in page.tags() {
                if let (Some(key), Some(value)) = (tag.key(), tag.value()) {
                    tags.insert(key.to_owned(), value.to_owned());
                }
            }
        }
        Ok(tags)
    }
}

/// An EC2 call's failure, naming the endpoint it went to.
fn failed<E>(
    client: &aws_sdk_ec2::Client,
    api: &'static str,
    err: &SdkError<E, HttpResponse>,
) -> CallError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let endpoint = endpoint_of("ec2", client.config().region());
    classify_at(api, Some(&endpoint), err)
}

/// End dates EC2 itself knows: a legacy spot block, or a Capacity Block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ec2Deadlines {
    /// Launch + `BlockDurationMinutes`, and the spot request id.
    pub legacy_spot_block_end: Option<(time::OffsetDateTime, String)>,
    /// The Capacity Block's `EndDate`, and the reservation id.
    pub capacity_block_end: Option<(time::OffsetDateTime, String)>,
}

pub trait InstanceCapacity {
    /// Looks up the spot request and the capacity reservation of
    /// `instance_id`, launched at `launched`. Called once, at start.
    fn ec2_deadlines(
        &self,
        instance_id: &str,
        launched: time::OffsetDateTime,
    ) -> impl Future<Output = Result<Ec2Deadlines, CallError>> + Send;

    /// The `EndDate` of Capacity Block `reservation_id` as EC2 says now (an
    /// extension moves it); `None` when it is not a Capacity Block.
    fn capacity_block_end(
        &self,
        reservation_id: &str,
    ) -> impl Future<Output = Result<Option<time::OffsetDateTime>, CallError>> + Send;

    /// `InstanceInitiatedShutdownBehavior`: `stop` or `terminate`.
    fn shutdown_behavior(
        &self,
        instance_id: &str,
    ) -> impl Future<Output = Result<Option<String>, CallError>> + Send;
}

pub use blockwatch_aws::to_time;

impl InstanceCapacity for Aws {
    async fn ec2_deadlines(
        &self,
        instance_id: &str,
        launched: time::OffsetDateTime,
    ) -> Result<Ec2Deadlines, CallError> {
        let client = aws_sdk_ec2::Client::new(self.config().await?);
        let described = client
            .describe_instances()
            .instance_ids(instance_id)
            .send()
            .await
            .map_err(|e| failed(&client, "ec2:DescribeInstances", &e))?;
        let instance = described
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .find(|i| i.instance_id() == Some(instance_id));
        let mut found = Ec2Deadlines::default();
        let Some(instance) = instance else {
            return Ok(found);
        };
        if let Some(request_id) = instance.spot_instance_request_id() {
            let requests = client
                .describe_spot_instance_requests()
                .spot_instance_request_ids(request_id)
                .send()
                .await
                .map_err(|e| failed(&client, "ec2:DescribeSpotInstanceRequests", &e))?;
            let minutes = requests
                .spot_instance_requests()
                .iter()
                .find_map(|r| r.block_duration_minutes());
            found.legacy_spot_block_end =
                legacy_spot_block_end(launched, minutes).map(|end| (end, request_id.to_owned()));
        }
        if let Some(reservation_id) = instance.capacity_reservation_id() {
            let end = self.capacity_block_end(reservation_id).await?;
            found.capacity_block_end = end.map(|end| (end, reservation_id.to_owned()));
        }
        Ok(found)
    }

    async fn capacity_block_end(
        &self,
        reservation_id: &str,
    ) -> Result<Option<time::OffsetDateTime>, CallError> {
        let client = aws_sdk_ec2::Client::new(self.config().await?);
        let reservations = client
            .describe_capacity_reservations()
            .capacity_reservation_ids(reservation_id)
            .send()
            .await
            .map_err(|e| failed(&client, "ec2:DescribeCapacityReservations", &e))?;
        Ok(reservations
            .capacity_reservations()
            .iter()
            .filter(|r| is_capacity_block(r.reservation_type().map(|t| t.as_str())))
            .find_map(|r| r.end_date().and_then(to_time)))
    }

    async fn shutdown_behavior(&self, instance_id: &str) -> Result<Option<String>, CallError> {
        let client = aws_sdk_ec2::Client::new(self.config().await?);
        let described = client
            .describe_instance_attribute()
            .instance_id(instance_id)
            .attribute(aws_sdk_ec2::types::InstanceAttributeName::InstanceInitiatedShutdownBehavior)
            .send()
            .await
            .map_err(|e| failed(&client, "ec2:DescribeInstanceAttribute", &e))?;
        Ok(described
            .instance_initiated_shutdown_behavior()
            .and_then(|v| v.value())
            .map(str::to_owned))
    }
}
