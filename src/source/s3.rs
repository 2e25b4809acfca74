//! The S3 registry as a model source, with an on-disk cache keyed by version: a Lambda re-init
//! (same sandbox, same `/tmp`) or a restarted server skips the download.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::port::{BoxFuture, Fetched, ModelSource, SourceError};
use crate::model::contract::ModelMetadata;
use crate::model::ModelArtifacts;
use crate::registry::{Registry, RegistryError};

/// A model source on the S3 registry.
pub struct S3ModelSource {
    registry: Registry,
    cache_dir: PathBuf,
}

/// The default cache: under the temp dir, since `/tmp` is the only writable place in Lambda.
/// `--model-cache-dir` (`LSTM_FORECAST_MODEL_CACHE`) overrides it.
pub fn default_cache_dir() -> PathBuf {
    std::env::temp_dir().join("lstm-forecast-models")
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
    let model_onnx = match metadata.onnx_sha256 {
        Some(_) => Some(std::fs::read(dir.join("model.onnx")).ok()?),
        None => None,
    };
    let intact = metadata.verify_checksum(&model_pt).is_ok()
        && model_onnx
            .as_ref()
            .is_none_or(|bytes| metadata.verify_onnx_checksum(bytes).is_ok());
    let signature = std::fs::read(dir.join(crate::model::signature::SIGNATURE_FILE)).ok();
    (metadata.version == version && intact).then_some(ModelArtifacts {
        metadata_json,
        model_pt,
        model_onnx,
        signature,
    })
}

fn write_cache(dir: &Path, artifacts: &ModelArtifacts) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    // Write-then-rename so a crash mid-write never leaves a truncated file under the final name.
    for (name, bytes) in artifacts.stored_files() {
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

    fn fetch(&self) -> BoxFuture<'_, Result<Fetched, SourceError>> {
        Box::pin(async move {
            let (artifacts, report) = self.fetch_current().await?;
            Ok(Fetched {
                artifacts,
                from_cache: report.from_cache,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_version_is_used_only_if_its_checksum_matches() {
        let dir = tempfile::tempdir().unwrap();
        let artifacts = super::super::local::bundled_artifacts();
        let version = ModelMetadata::from_json(&artifacts.metadata_json)
            .unwrap()
            .version;
        write_cache(dir.path(), &artifacts).unwrap();
        assert!(read_cached(dir.path(), &version).is_some());
        assert!(read_cached(dir.path(), "other-version").is_none());
        std::fs::write(dir.path().join("model.pt"), b"tampered").unwrap();
        assert!(read_cached(dir.path(), &version).is_none());
        write_cache(dir.path(), &artifacts).unwrap();
        std::fs::write(dir.path().join("model.onnx"), b"tampered").unwrap();
        assert!(read_cached(dir.path(), &version).is_none());
    }
}
