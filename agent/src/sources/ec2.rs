//! `ec2:DescribeTags`, the fallback when tags are not exposed in IMDS.

use std::collections::BTreeMap;
use std::future::Future;

use aws_sdk_ec2::types::Filter;

use super::aws::{classify, Aws};
use super::SourceError;
use crate::core::config::TAG_KEYS;

pub trait TagDirectory {
    /// The `blockwatch:*` tags of `instance_id`.
    fn instance_tags(
        &self,
        instance_id: &str,
    ) -> impl Future<Output = Result<BTreeMap<String, String>, SourceError>> + Send;
}

impl TagDirectory for Aws {
    async fn instance_tags(
        &self,
        instance_id: &str,
    ) -> Result<BTreeMap<String, String>, SourceError> {
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
            let page = page.map_err(|e| classify("ec2:DescribeTags", &e))?;
            for tag in page.tags() {
                if let (Some(key), Some(value)) = (tag.key(), tag.value()) {
                    tags.insert(key.to_owned(), value.to_owned());
                }
            }
        }
        Ok(tags)
    }
}
