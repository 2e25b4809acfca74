//! AWS SDK configuration shared by every AWS user (model source, registry, stores, metrics).

use std::sync::{Arc, RwLock};
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
///
/// `endpoint_url` (`--aws-endpoint-url`) points every client at one emulator (moto, MinIO,
/// ministack) and overrides any endpoint from the environment. Without it, the SDK resolves each
/// service's endpoint itself, the standard way: `AWS_ENDPOINT_URL_<SERVICE>` (e.g.
/// `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL_CLOUDWATCH`) or the profile's `services` section, then
/// `AWS_ENDPOINT_URL`, then AWS; `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true` turns them all off. So S3
/// and CloudWatch may be on different emulators (the tests run S3 on moto, CloudWatch on ministack).
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
/// service: a network round trip on every local start, and seconds where a firewall drops the
/// packets (figures: BENCHMARKS.md, "AWS configuration at a local start").
pub fn offline_config() -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .build()
}

/// An S3 client. With a custom endpoint (an emulator such as moto or MinIO), path-style addressing
/// is used, because `bucket.127.0.0.1` does not resolve.
pub fn s3_client(config: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    let s3_config = aws_sdk_s3::config::Builder::from(config)
        .force_path_style(s3_endpoint_url(config).is_some())
        .build();
    aws_sdk_s3::Client::from_conf(s3_config)
}

/// The endpoint S3's client gets from `config`, resolved as `aws_sdk_s3::config::Builder::from`
/// resolves it (the built config does not tell): an endpoint set in code wins; otherwise S3's own
/// (`AWS_ENDPOINT_URL_S3`, the profile's `services` section) before the shared one.
fn s3_endpoint_url(config: &aws_config::SdkConfig) -> Option<String> {
    let shared = config.endpoint_url().map(str::to_owned);
    if config.get_origin("endpoint_url").is_client_config() {
        return shared;
    }
    let key = aws_types::service_config::ServiceConfigKey::builder()
        .service_id("S3")
        .env("AWS_ENDPOINT_URL")
        .profile("endpoint_url")
        .build()
        .expect("every field is set");
    config
        .service_config()
        .and_then(|service| service.load_config(key))
        .or(shared)
}

/// A CloudWatch client with short timeouts: a metrics flush must end promptly when CloudWatch is
/// down, and an alarm check must not hold an invocation for long.
pub fn cloudwatch_client(config: &aws_config::SdkConfig) -> aws_sdk_cloudwatch::Client {
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(1))
        .operation_attempt_timeout(Duration::from_secs(3))
        .operation_timeout(Duration::from_secs(8))
        .build();
    let conf = aws_sdk_cloudwatch::config::Builder::from(config)
        .timeout_config(timeouts)
        .retry_config(RetryConfig::standard().with_max_attempts(3))
        .build();
    aws_sdk_cloudwatch::Client::from_conf(conf)
}

/// An SDK client that can be replaced in place: every holder of a clone of this handle uses the
/// replacement from its next call on ([`AwsClients::rebuild`]).
///
/// A plain client captures its credentials cache and connection pool for life. After a SnapStart
/// restore both belong to another environment (expired or foreign credentials, connections to
/// peers that are gone), so the stores, the registry and the sinks hold this handle instead.
#[derive(Clone)]
pub struct Shared<C>(Arc<RwLock<C>>);

impl<C: Clone> Shared<C> {
    /// The client to use now (cheap: SDK clients are reference-counted).
    pub fn current(&self) -> C {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn replace(&self, client: C) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = client;
    }
}

impl<C> From<C> for Shared<C> {
    fn from(client: C) -> Self {
        Shared(Arc::new(RwLock::new(client)))
    }
}

/// The AWS clients of one process: built once by the composition root, shared by everything that
/// calls AWS, and rebuilt in place after a SnapStart restore.
#[derive(Clone)]
pub struct AwsClients {
    /// `--aws-endpoint-url`, kept so a rebuild points where the first build did.
    endpoint_url: Option<String>,
    /// Whether the process calls AWS at all ([`offline_config`] otherwise).
    online: bool,
    config: Shared<aws_config::SdkConfig>,
    s3: Shared<aws_sdk_s3::Client>,
    cloudwatch: Shared<aws_sdk_cloudwatch::Client>,
}

impl AwsClients {
    /// Clients configured the standard way ([`sdk_config`]).
    pub async fn load(endpoint_url: Option<&str>) -> Self {
        let config = sdk_config(endpoint_url).await;
        Self::from_config(config, endpoint_url.map(str::to_owned), true)
    }

    /// Clients for a process that never calls AWS ([`offline_config`]).
    pub fn offline() -> Self {
        Self::from_config(offline_config(), None, false)
    }

    fn from_config(
        config: aws_config::SdkConfig,
        endpoint_url: Option<String>,
        online: bool,
    ) -> Self {
        AwsClients {
            endpoint_url,
            online,
            s3: s3_client(&config).into(),
            cloudwatch: cloudwatch_client(&config).into(),
            config: config.into(),
        }
    }

    /// These clients with `s3` in place of the S3 client (a test's own emulator client).
    pub fn with_s3(mut self, s3: aws_sdk_s3::Client) -> Self {
        self.s3 = s3.into();
        self
    }

    pub fn s3(&self) -> &Shared<aws_sdk_s3::Client> {
        &self.s3
    }

    pub fn cloudwatch(&self) -> &Shared<aws_sdk_cloudwatch::Client> {
        &self.cloudwatch
    }

    /// The configuration the current clients were built from.
    pub fn sdk_config(&self) -> aws_config::SdkConfig {
        self.config.current()
    }

    /// Loads the configuration again (credentials, region, endpoints) and replaces every client,
    /// with a fresh credentials cache and connection pool.
    pub async fn rebuild(&self) {
        let config = if self.online {
            sdk_config(self.endpoint_url.as_deref()).await
        } else {
            offline_config()
        };
        self.s3.replace(s3_client(&config));
        self.cloudwatch.replace(cloudwatch_client(&config));
        self.config.replace(config);
    }
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
