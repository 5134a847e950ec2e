//! The one time limit every AWS step of the loop has.

use std::future::Future;
use std::time::Duration;

use crate::sources::{AwsFailure, CallError};

/// The longest the loop waits for one AWS step (a call or two, with the
/// SDK's own retries) before it counts as a transient failure: a backstop
/// above the SDK's operation timeouts, should they not fire.
pub const AWS_CALL_LIMIT: Duration = Duration::from_secs(90);

/// Runs an AWS call with [`AWS_CALL_LIMIT`]; past it, a transient failure.
/// The call is boxed: SDK futures are large.
pub(super) fn bounded<'a, T: 'a>(
    api: &'static str,
    call: impl Future<Output = Result<T, CallError>> + 'a,
) -> impl Future<Output = Result<T, CallError>> + 'a {
    let call = Box::pin(call);
    async move {
        tokio::time::timeout(AWS_CALL_LIMIT, call)
            .await
            .unwrap_or_else(|_| {
                Err(CallError::Aws {
                    api,
                    kind: AwsFailure::Transient,
                    detail: format!(
                        "no answer within {}",
                        humantime::format_duration(AWS_CALL_LIMIT)
                    ),
                })
            })
    }
}
