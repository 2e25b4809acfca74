//! AWS SDK configuration shared by every AWS user (model source, registry, stores, metrics).

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;

/// Budget for S3 calls. Lambda gives init 10 s in all, so one operation (with its retries) must
/// leave room for libtorch's load and the warm-up: at most ~6 s, retried with exponential backoff.
pub fn timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(1))
        .operation_attempt_timeout(Duration::from_secs(3))
        .operation_timeout(Duration::from_secs(6))
        .build()
}

pub fn retries() -> RetryConfig {
    RetryConfig::standard()
        .with_max_attempts(4)
        .with_initial_backoff(Duration::from_millis(100))
}

/// Loads credentials and region the standard way (env, profile, web identity, ECS, IMDS).
/// `endpoint_url` (`--aws-endpoint-url`, `AWS_ENDPOINT_URL`) points every client at an emulator
/// such as moto or MinIO.
pub async fn sdk_config(endpoint_url: Option<&str>) -> aws_config::SdkConfig {
    let loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(retries())
        .timeout_config(timeouts());
    match endpoint_url {
        Some(url) => loader.endpoint_url(url),
        None => loader,
    }
    .load()
    .await
}

/// The config for a process that never calls AWS (the local default: bundled model, Prometheus).
/// [`sdk_config`] would look for a region and credentials, which asks the instance metadata
/// service: ~15 ms of every local start, and seconds where a firewall drops the packets.
pub fn offline_config() -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .build()
}

/// An S3 client. With a custom endpoint (an emulator such as moto or MinIO), path-style addressing
/// is used, because `bucket.127.0.0.1` does not resolve.
pub fn s3_client(config: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    let s3_config = aws_sdk_s3::config::Builder::from(config)
        .force_path_style(config.endpoint_url().is_some())
        .build();
    aws_sdk_s3::Client::from_conf(s3_config)
}

/// `s3://bucket/key` split into its parts.
pub fn parse_s3_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("s3://")?;
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return None;
    }
    Some((bucket.to_string(), key.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls_split_into_bucket_and_key() {
        assert_eq!(
            parse_s3_url("s3://b/models/m/1/model.pt"),
            Some(("b".into(), "models/m/1/model.pt".into()))
        );
        assert_eq!(parse_s3_url("s3://b"), Some(("b".into(), String::new())));
        assert_eq!(parse_s3_url("s3:///k"), None);
        assert_eq!(parse_s3_url("file:///k"), None);
    }
}
