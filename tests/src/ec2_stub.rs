//! A stand-in for EC2's legacy spot blocks and Capacity Blocks, which moto
//! lacks: the calls the agent makes, answered in EC2's XML.
//!
//! A fixture: a failed setup step panics, which fails the test that asked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

/// A Capacity Block end that a test may move while the agent runs.
pub type MovableEnd = std::sync::Arc<std::sync::Mutex<Option<time::OffsetDateTime>>>;

/// moto has neither legacy spot blocks nor Capacity Blocks, so these come
/// from a stub EC2 endpoint (`AWS_ENDPOINT_URL_EC2`) that answers the calls
/// in EC2's XML, read by the real SDK. `capacity_block_end` is read at each
/// `DescribeCapacityReservations`, so a test can extend the block.
pub fn ec2_stub(
    instance_id: String,
    block_minutes: Option<u32>,
    capacity_block_end: MovableEnd,
) -> crate::stub::StubServer {
    use blockwatch_core::time_text::rfc3339;
    crate::stub::StubServer::start(move |_, request| {
        let end = *capacity_block_end.lock().unwrap();
        let action = request.body.split('&').find_map(|kv| kv.strip_prefix("Action=")).unwrap_or_default().to_owned();
        let body = match action.as_str() {
            "DescribeInstances" => format!(
                "<DescribeInstancesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>r</requestId><reservationSet><item><reservationId>r-1</reservationId><instancesSet><item><instanceId>{instance_id}</instanceId>{}{}</item></instancesSet></item></reservationSet></DescribeInstancesResponse>",
                block_minutes.map(|_| "<spotInstanceRequestId>sir-0123abcd</spotInstanceRequestId>").unwrap_or_default(),
                end.map(|_| "<capacityReservationId>cr-0123abcd</capacityReservationId>").unwrap_or_default(),
            ),
            "DescribeSpotInstanceRequests" => format!(
                "<DescribeSpotInstanceRequestsResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>r</requestId><spotInstanceRequestSet><item><spotInstanceRequestId>sir-0123abcd</spotInstanceRequestId><blockDurationMinutes>{}</blockDurationMinutes></item></spotInstanceRequestSet></DescribeSpotInstanceRequestsResponse>",
                block_minutes.unwrap_or_default()
            ),
            "DescribeCapacityReservations" => format!(
                "<DescribeCapacityReservationsResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>r</requestId><capacityReservationSet><item><capacityReservationId>cr-0123abcd</capacityReservationId><reservationType>capacity-block</reservationType><endDate>{}</endDate></item></capacityReservationSet></DescribeCapacityReservationsResponse>",
                end.map(rfc3339).unwrap_or_default()
            ),
            "DescribeInstanceAttribute" => format!(
                "<DescribeInstanceAttributeResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>r</requestId><instanceId>{instance_id}</instanceId><instanceInitiatedShutdownBehavior><value>terminate</value></instanceInitiatedShutdownBehavior></DescribeInstanceAttributeResponse>"
            ),
            _ => return (400, format!("<Response><Errors><Error><Code>InvalidAction</Code><Message>{action}</Message></Error></Errors></Response>")),
        };
        (200, body)
    })
    .unwrap()
}

/// A fixed end for [`ec2_stub`].
pub fn fixed_end(end: Option<time::OffsetDateTime>) -> MovableEnd {
    std::sync::Arc::new(std::sync::Mutex::new(end))
}
