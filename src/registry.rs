//! The model registry on S3, and the S3 model source built on it.
//!
//! Layout under `s3://BUCKET/models/NAME/`:
//!
//! ```text
//! VERSION/model.pt      TorchScript, uploaded first
//! VERSION/model.json    the contract, uploaded last: a version with model.json is complete
//! alias/live.json       {"version": "...", "history": [...], ...}: what serves, and what served before
//! ```
//!
//! The alias keeps its history (oldest first, current last) so a rollback knows where to go
//! without listing or sorting versions. Alias updates are conditional writes (`If-Match` on the
//! ETag read, `If-None-Match: *` when creating), so two concurrent promotions cannot silently
//! overwrite each other: the loser gets [`RegistryError::Conflict`] and can retry.

use std::path::{Path, PathBuf};
use std::time::Instant;

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use serde::{Deserialize, Serialize};

use crate::model::contract::ModelMetadata;
use crate::model::ModelArtifacts;
use crate::source::{BoxFuture, ModelSource, SourceError};

/// Where the registry lives and which model in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryRef {
    pub bucket: String,
    pub name: String,
    /// A pinned version, or `None` for the `live` alias.
    pub version: Option<String>,
}

impl RegistryRef {
    /// Parses `s3://BUCKET/models/NAME` (the live alias) or `s3://BUCKET/models/NAME/VERSION`.
    pub fn parse(uri: &str) -> Result<Self, RegistryError> {
        let invalid = |why: &str| {
            RegistryError::Uri(format!(
                "`{uri}`: {why} (expected s3://BUCKET/models/NAME[/VERSION])"
            ))
        };
        let (bucket, key) =
            crate::aws::parse_s3_url(uri).ok_or_else(|| invalid("not an s3:// URL"))?;
        let parts: Vec<&str> = key.trim_end_matches('/').split('/').collect();
        match parts.as_slice() {
            ["models", name] if !name.is_empty() => Ok(RegistryRef {
                bucket,
                name: name.to_string(),
                version: None,
            }),
            ["models", name, version] if !name.is_empty() && !version.is_empty() => {
                Ok(RegistryRef {
                    bucket,
                    name: name.to_string(),
                    version: Some(version.to_string()),
                })
            }
            _ => Err(invalid(
                "the key must be models/NAME or models/NAME/VERSION",
            )),
        }
    }

    pub fn prefix(&self) -> String {
        format!("models/{}", self.name)
    }

    pub fn alias_key(&self) -> String {
        format!("{}/alias/live.json", self.prefix())
    }

    pub fn object_key(&self, version: &str, file: &str) -> String {
        format!("{}/{version}/{file}", self.prefix())
    }

    /// The registry URI without a version.
    pub fn root_uri(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix())
    }
}

impl std::fmt::Display for RegistryRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.version {
            Some(v) => write!(f, "{}/{v}", self.root_uri()),
            None => write!(f, "{} (alias live)", self.root_uri()),
        }
    }
}

/// The `live` alias document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alias {
    /// The version in service.
    pub version: String,
    /// Versions that were live, oldest first; the last one is `version`.
    pub history: Vec<String>,
    pub updated_at: String,
    /// The last rollback, so a repeated alarm event is recognised and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rollback: Option<Rollback>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollback {
    /// What asked for it, e.g. `alarm:NAME@STATE-TIMESTAMP` or `cli`.
    pub trigger: String,
    pub from: String,
    pub to: String,
    pub at: String,
}

/// What a rollback did.
#[derive(Debug, Clone, PartialEq)]
pub enum RollbackOutcome {
    RolledBack {
        from: String,
        to: String,
    },
    /// The same trigger already rolled this alias back; nothing was changed.
    AlreadyApplied {
        from: String,
        to: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid registry URI {0}")]
    Uri(String),
    #[error("s3://{bucket}/{key} does not exist")]
    MissingObject { bucket: String, key: String },
    #[error("access denied to s3://{bucket}/{key} (check the role's s3:GetObject/PutObject permissions)")]
    AccessDenied { bucket: String, key: String },
    #[error("S3 is unreachable for s3://{bucket}/{key}: {cause}")]
    Unreachable {
        bucket: String,
        key: String,
        cause: String,
    },
    #[error("S3 request for s3://{bucket}/{key} failed: {cause}")]
    S3 {
        bucket: String,
        key: String,
        cause: String,
    },
    #[error(
        "s3://{bucket}/{key} changed while it was being updated (concurrent promotion?); retry"
    )]
    Conflict { bucket: String, key: String },
    #[error("no model is live: s3://{bucket}/{key} does not exist (publish one with `lstm-forecast model publish`)")]
    NoAlias { bucket: String, key: String },
    #[error("s3://{bucket}/{key} is not a valid alias document: {cause}")]
    InvalidAlias {
        bucket: String,
        key: String,
        cause: String,
    },
    #[error("version {version} is not in the registry (s3://{bucket}/{key} does not exist)")]
    UnknownVersion {
        version: String,
        bucket: String,
        key: String,
    },
    #[error("version {version} is already published at s3://{bucket}/{key}; versions are immutable, bump `version` in model.json")]
    AlreadyPublished {
        version: String,
        bucket: String,
        key: String,
    },
    #[error("cannot roll back {name}: {current} is the only version that was ever live; the alias is unchanged")]
    NoPreviousVersion { name: String, current: String },
    #[error("model at s3://{bucket}/{key}: {cause}")]
    Contract {
        bucket: String,
        key: String,
        cause: String,
    },
}

impl RegistryError {
    /// Whether retrying later may help (S3 down or throttled, a concurrent writer).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            RegistryError::Unreachable { .. } | RegistryError::Conflict { .. }
        )
    }
}

fn classify<E, R>(err: SdkError<E, R>, bucket: &str, key: &str) -> RegistryError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
    SdkError<E, R>: std::error::Error + 'static,
{
    let bucket = bucket.to_string();
    let key = key.to_string();
    let cause = DisplayErrorContext(&err).to_string();
    match &err {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
            RegistryError::Unreachable { bucket, key, cause }
        }
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or_default();
            match code {
                "NoSuchKey" | "NotFound" | "NoSuchBucket" => {
                    RegistryError::MissingObject { bucket, key }
                }
                "AccessDenied" | "Forbidden" => RegistryError::AccessDenied { bucket, key },
                "PreconditionFailed" | "ConditionalRequestConflict" => {
                    RegistryError::Conflict { bucket, key }
                }
                _ => RegistryError::S3 { bucket, key, cause },
            }
        }
        _ => RegistryError::S3 { bucket, key, cause },
    }
}

/// Head requests carry no error body, so their codes are only the HTTP status.
fn classify_head(
    err: SdkError<
        aws_sdk_s3::operation::head_object::HeadObjectError,
        aws_sdk_s3::config::http::HttpResponse,
    >,
    bucket: &str,
    key: &str,
) -> RegistryError {
    if let SdkError::ServiceError(service) = &err {
        match service.raw().status().as_u16() {
            404 => {
                return RegistryError::MissingObject {
                    bucket: bucket.into(),
                    key: key.into(),
                }
            }
            403 => {
                return RegistryError::AccessDenied {
                    bucket: bucket.into(),
                    key: key.into(),
                }
            }
            _ => {}
        }
    }
    classify(err, bucket, key)
}

/// A model's versions and alias on S3.
#[derive(Clone)]
pub struct Registry {
    client: aws_sdk_s3::Client,
    pub model: RegistryRef,
}

impl Registry {
    pub fn new(client: aws_sdk_s3::Client, model: RegistryRef) -> Self {
        Registry { client, model }
    }

    async fn get(&self, key: &str) -> Result<(Vec<u8>, Option<String>), RegistryError> {
        let bucket = &self.model.bucket;
        let output = self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| classify(e, bucket, key))?;
        let etag = output.e_tag().map(str::to_owned);
        let bytes = output
            .body
            .collect()
            .await
            .map_err(|e| RegistryError::Unreachable {
                bucket: bucket.clone(),
                key: key.to_string(),
                cause: format!("reading the body: {e}"),
            })?;
        Ok((bytes.into_bytes().to_vec(), etag))
    }

    async fn exists(&self, key: &str) -> Result<bool, RegistryError> {
        let bucket = &self.model.bucket;
        match self
            .client
            .head_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) => match classify_head(e, bucket, key) {
                RegistryError::MissingObject { .. } => Ok(false),
                other => Err(other),
            },
        }
    }

    async fn put(&self, key: &str, body: Vec<u8>, content_type: &str) -> Result<(), RegistryError> {
        let bucket = &self.model.bucket;
        self.client
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| classify(e, bucket, key))?;
        Ok(())
    }

    /// Reads the alias and its ETag; `None` when no model was ever promoted.
    pub async fn read_alias(&self) -> Result<Option<(Alias, Option<String>)>, RegistryError> {
        let key = self.model.alias_key();
        match self.get(&key).await {
            Ok((bytes, etag)) => {
                let alias =
                    serde_json::from_slice(&bytes).map_err(|e| RegistryError::InvalidAlias {
                        bucket: self.model.bucket.clone(),
                        key: key.clone(),
                        cause: e.to_string(),
                    })?;
                Ok(Some((alias, etag)))
            }
            Err(RegistryError::MissingObject { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes the alias only if it still has `expected_etag` (or does not exist yet, for `None`).
    pub async fn write_alias(
        &self,
        alias: &Alias,
        expected_etag: Option<&str>,
    ) -> Result<(), RegistryError> {
        let bucket = &self.model.bucket;
        let key = self.model.alias_key();
        let body = serde_json::to_vec_pretty(alias).expect("alias serialises");
        let request = self
            .client
            .put_object()
            .bucket(bucket)
            .key(&key)
            .content_type("application/json")
            .body(ByteStream::from(body));
        let request = match expected_etag {
            Some(etag) => request.if_match(etag),
            None => request.if_none_match("*"),
        };
        request
            .send()
            .await
            .map_err(|e| classify(e, bucket, &key))?;
        Ok(())
    }

    /// The version the alias points at.
    pub async fn live_version(&self) -> Result<String, RegistryError> {
        match self.read_alias().await? {
            Some((alias, _)) => Ok(alias.version),
            None => Err(RegistryError::NoAlias {
                bucket: self.model.bucket.clone(),
                key: self.model.alias_key(),
            }),
        }
    }

    /// The pinned version, or the live one.
    pub async fn resolve_version(&self) -> Result<String, RegistryError> {
        match &self.model.version {
            Some(v) => Ok(v.clone()),
            None => self.live_version().await,
        }
    }

    /// Downloads one version's files (model.json, then model.pt, concurrently) and checks that
    /// they agree with each other and with the version they are filed under.
    pub async fn fetch_version(&self, version: &str) -> Result<ModelArtifacts, RegistryError> {
        let json_key = self.model.object_key(version, "model.json");
        let pt_key = self.model.object_key(version, "model.pt");
        let (json, pt) = tokio::join!(self.get(&json_key), self.get(&pt_key));
        let not_found_as_unknown = |e: RegistryError, key: &str| match e {
            RegistryError::MissingObject { bucket, .. } => RegistryError::UnknownVersion {
                version: version.to_string(),
                bucket,
                key: key.to_string(),
            },
            other => other,
        };
        let metadata_json = json.map_err(|e| not_found_as_unknown(e, &json_key))?.0;
        let model_pt = pt.map_err(|e| not_found_as_unknown(e, &pt_key))?.0;
        let contract_error = |cause: String| RegistryError::Contract {
            bucket: self.model.bucket.clone(),
            key: json_key.clone(),
            cause,
        };
        let metadata =
            ModelMetadata::from_json(&metadata_json).map_err(|e| contract_error(e.to_string()))?;
        if metadata.version != version {
            return Err(contract_error(format!(
                "model.json declares version {} but is filed under {version}",
                metadata.version
            )));
        }
        metadata
            .verify_checksum(&model_pt)
            .map_err(|e| contract_error(e.to_string()))?;
        Ok(ModelArtifacts {
            metadata_json,
            model_pt,
        })
    }

    /// Uploads a (validated) model as a new version; `model.json` goes last so readers never see a
    /// half-uploaded version. `progress` is told the bytes uploaded so far.
    pub async fn publish(
        &self,
        artifacts: &ModelArtifacts,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<String, RegistryError> {
        let metadata = ModelMetadata::from_json(&artifacts.metadata_json).map_err(|e| {
            RegistryError::Contract {
                bucket: self.model.bucket.clone(),
                key: "model.json".into(),
                cause: e.to_string(),
            }
        })?;
        let version = metadata.version.clone();
        let json_key = self.model.object_key(&version, "model.json");
        if self.exists(&json_key).await? {
            return Err(RegistryError::AlreadyPublished {
                version,
                bucket: self.model.bucket.clone(),
                key: json_key,
            });
        }
        self.put(
            &self.model.object_key(&version, "model.pt"),
            artifacts.model_pt.clone(),
            "application/octet-stream",
        )
        .await?;
        progress(artifacts.model_pt.len() as u64);
        self.put(
            &json_key,
            artifacts.metadata_json.clone(),
            "application/json",
        )
        .await?;
        progress((artifacts.model_pt.len() + artifacts.metadata_json.len()) as u64);
        Ok(version)
    }

    /// Points the alias at `version` (which must be published). Promoting the live version is a
    /// no-op. Returns the previous live version.
    pub async fn promote(&self, version: &str) -> Result<Option<String>, RegistryError> {
        let json_key = self.model.object_key(version, "model.json");
        if !self.exists(&json_key).await? {
            return Err(RegistryError::UnknownVersion {
                version: version.to_string(),
                bucket: self.model.bucket.clone(),
                key: json_key,
            });
        }
        let now = now_rfc3339();
        match self.read_alias().await? {
            None => {
                let alias = Alias {
                    version: version.to_string(),
                    history: vec![version.to_string()],
                    updated_at: now,
                    last_rollback: None,
                };
                self.write_alias(&alias, None).await?;
                Ok(None)
            }
            Some((alias, _)) if alias.version == version => Ok(Some(alias.version)),
            Some((mut alias, etag)) => {
                let previous = alias.version.clone();
                alias.history.push(version.to_string());
                alias.version = version.to_string();
                alias.updated_at = now;
                self.write_alias(&alias, etag.as_deref()).await?;
                Ok(Some(previous))
            }
        }
    }

    /// Moves the alias back to the version live before the current one. Idempotent per `trigger`:
    /// the same trigger twice rolls back once.
    pub async fn rollback(&self, trigger: &str) -> Result<RollbackOutcome, RegistryError> {
        let Some((mut alias, etag)) = self.read_alias().await? else {
            return Err(RegistryError::NoAlias {
                bucket: self.model.bucket.clone(),
                key: self.model.alias_key(),
            });
        };
        if let Some(last) = &alias.last_rollback {
            if last.trigger == trigger {
                return Ok(RollbackOutcome::AlreadyApplied {
                    from: last.from.clone(),
                    to: last.to.clone(),
                });
            }
        }
        if alias.history.len() < 2 {
            return Err(RegistryError::NoPreviousVersion {
                name: self.model.name.clone(),
                current: alias.version.clone(),
            });
        }
        let from = alias.history.pop().expect("len >= 2");
        let to = alias.history.last().expect("len >= 1").clone();
        let now = now_rfc3339();
        alias.version = to.clone();
        alias.updated_at = now.clone();
        alias.last_rollback = Some(Rollback {
            trigger: trigger.to_string(),
            from: from.clone(),
            to: to.clone(),
            at: now,
        });
        self.write_alias(&alias, etag.as_deref()).await?;
        Ok(RollbackOutcome::RolledBack { from, to })
    }

    /// Published versions (those with a model.json), in key order.
    pub async fn list_versions(&self) -> Result<Vec<String>, RegistryError> {
        let bucket = &self.model.bucket;
        let prefix = format!("{}/", self.model.prefix());
        let mut versions = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(&prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| classify(e, bucket, &prefix))?;
            for object in page.contents() {
                if let Some(version) = object
                    .key()
                    .and_then(|k| k.strip_prefix(&prefix))
                    .and_then(|k| k.strip_suffix("/model.json"))
                {
                    if !version.contains('/') {
                        versions.push(version.to_string());
                    }
                }
            }
        }
        Ok(versions)
    }
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A model source on the S3 registry, with an on-disk cache keyed by version: a Lambda re-init
/// (same sandbox, same `/tmp`) or a restarted server skips the download.
pub struct S3ModelSource {
    registry: Registry,
    cache_dir: PathBuf,
}

/// Where downloaded versions are cached: `$LSTM_FORECAST_MODEL_CACHE`, else the temp dir (`/tmp` is
/// the only writable place in Lambda).
pub fn default_cache_dir() -> PathBuf {
    std::env::var_os("LSTM_FORECAST_MODEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("lstm-forecast-models"))
}

/// What a fetch did, for the init log line.
#[derive(Debug, Clone)]
pub struct FetchReport {
    pub version: String,
    pub from_cache: bool,
    pub duration: std::time::Duration,
}

impl S3ModelSource {
    pub fn new(registry: Registry, cache_dir: PathBuf) -> Self {
        S3ModelSource {
            registry,
            cache_dir,
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    fn cache_path(&self, version: &str) -> PathBuf {
        let model = &self.registry.model;
        self.cache_dir
            .join(&model.bucket)
            .join(&model.name)
            .join(version)
    }

    /// Fetches `version`, from the cache when its checksum still matches.
    pub async fn fetch_version(
        &self,
        version: &str,
    ) -> Result<(ModelArtifacts, FetchReport), RegistryError> {
        let started = Instant::now();
        let dir = self.cache_path(version);
        if let Some(artifacts) = read_cached(&dir, version) {
            return Ok((
                artifacts,
                FetchReport {
                    version: version.to_string(),
                    from_cache: true,
                    duration: started.elapsed(),
                },
            ));
        }
        let artifacts = self.registry.fetch_version(version).await?;
        if let Err(e) = write_cache(&dir, &artifacts) {
            // A read-only or full disk costs a re-download next time, nothing more.
            tracing::warn!(dir = %dir.display(), "could not cache the model: {e}");
        }
        Ok((
            artifacts,
            FetchReport {
                version: version.to_string(),
                from_cache: false,
                duration: started.elapsed(),
            },
        ))
    }

    /// Resolves the alias (or pinned version) and fetches it.
    pub async fn fetch_current(&self) -> Result<(ModelArtifacts, FetchReport), RegistryError> {
        let version = self.registry.resolve_version().await?;
        self.fetch_version(&version).await
    }
}

fn read_cached(dir: &Path, version: &str) -> Option<ModelArtifacts> {
    let metadata_json = std::fs::read(dir.join("model.json")).ok()?;
    let model_pt = std::fs::read(dir.join("model.pt")).ok()?;
    let metadata = ModelMetadata::from_json(&metadata_json).ok()?;
    (metadata.version == version && metadata.verify_checksum(&model_pt).is_ok()).then_some(
        ModelArtifacts {
            metadata_json,
            model_pt,
        },
    )
}

fn write_cache(dir: &Path, artifacts: &ModelArtifacts) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    // Write-then-rename so a crash mid-write never leaves a truncated file under the final name.
    for (name, bytes) in [
        ("model.pt", &artifacts.model_pt),
        ("model.json", &artifacts.metadata_json),
    ] {
        let partial = dir.join(format!("{name}.partial"));
        std::fs::write(&partial, bytes)?;
        std::fs::rename(&partial, dir.join(name))?;
    }
    Ok(())
}

impl ModelSource for S3ModelSource {
    fn describe(&self) -> String {
        self.registry.model.to_string()
    }

    fn fetch(&self) -> BoxFuture<'_, Result<ModelArtifacts, SourceError>> {
        Box::pin(async move {
            self.fetch_current()
                .await
                .map(|(artifacts, _)| artifacts)
                .map_err(|e| SourceError::Remote(e.to_string()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_uris_name_a_model_and_optionally_a_version() {
        let live = RegistryRef::parse("s3://bucket/models/etth1").unwrap();
        assert_eq!(live.version, None);
        assert_eq!(live.alias_key(), "models/etth1/alias/live.json");
        let pinned = RegistryRef::parse("s3://bucket/models/etth1/1.0.0/").unwrap();
        assert_eq!(pinned.version.as_deref(), Some("1.0.0"));
        assert_eq!(
            pinned.object_key("1.0.0", "model.pt"),
            "models/etth1/1.0.0/model.pt"
        );
        for bad in [
            "s3://bucket",
            "s3://bucket/etth1",
            "s3://bucket/models/a/b/c",
            "http://x/models/a",
        ] {
            assert!(RegistryRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_cached_version_is_used_only_if_its_checksum_matches() {
        let dir = tempfile::tempdir().unwrap();
        let artifacts = ModelArtifacts {
            metadata_json: crate::source::BUNDLED_MODEL_JSON.to_vec(),
            model_pt: crate::source::BUNDLED_MODEL_PT.to_vec(),
        };
        let version = ModelMetadata::from_json(&artifacts.metadata_json)
            .unwrap()
            .version;
        write_cache(dir.path(), &artifacts).unwrap();
        assert!(read_cached(dir.path(), &version).is_some());
        assert!(read_cached(dir.path(), "other-version").is_none());
        std::fs::write(dir.path().join("model.pt"), b"tampered").unwrap();
        assert!(read_cached(dir.path(), &version).is_none());
    }
}
