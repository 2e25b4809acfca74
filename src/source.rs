//! The model-source port: where `model.json` and `model.pt` come from.
//!
//! Sources only fetch bytes; checking and loading is [`crate::model::Model::load`]'s job, so every
//! source gets the same checks.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use crate::model::ModelArtifacts;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Fetches a model's two files.
pub trait ModelSource: Send + Sync {
    /// Human-readable location for logs and errors (`file:///...`, `s3://...`, `bundled`).
    fn describe(&self) -> String;
    fn fetch(&self) -> BoxFuture<'_, Result<ModelArtifacts, SourceError>>;
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    // The cause is in the message and deliberately not a `#[source]`: anyhow's `{:#}` prints
    // the source chain too, which would repeat it.
    #[error("cannot read {path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("unsupported model URI `{0}` (use `bundled`, a directory, file://DIR, or s3://BUCKET/models/NAME[/VERSION])")]
    UnsupportedUri(String),
    #[error("{0}")]
    Remote(String),
}

/// The ETTh1 model compiled into the binary: `make run` and tests need no files or network.
pub struct BundledSource;

pub const BUNDLED_MODEL_JSON: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/model_artifacts/etth1-ot-lstm/model.json"
));
pub const BUNDLED_MODEL_PT: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/model_artifacts/etth1-ot-lstm/model.pt"
));

impl ModelSource for BundledSource {
    fn describe(&self) -> String {
        "bundled".into()
    }

    fn fetch(&self) -> BoxFuture<'_, Result<ModelArtifacts, SourceError>> {
        Box::pin(async {
            Ok(ModelArtifacts {
                metadata_json: BUNDLED_MODEL_JSON.to_vec(),
                model_pt: BUNDLED_MODEL_PT.to_vec(),
            })
        })
    }
}

/// A model directory on local disk.
pub struct DirectorySource {
    pub dir: PathBuf,
}

impl DirectorySource {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DirectorySource { dir: dir.into() }
    }

    /// Synchronous read, for the CLI paths that have no runtime.
    pub fn read(&self) -> Result<ModelArtifacts, SourceError> {
        Ok(ModelArtifacts {
            metadata_json: read(&self.dir.join("model.json"))?,
            model_pt: read(&self.dir.join("model.pt"))?,
        })
    }
}

fn read(path: &Path) -> Result<Vec<u8>, SourceError> {
    std::fs::read(path).map_err(|cause| SourceError::Io {
        path: path.to_path_buf(),
        cause,
    })
}

impl ModelSource for DirectorySource {
    fn describe(&self) -> String {
        format!("file://{}", self.dir.display())
    }

    fn fetch(&self) -> BoxFuture<'_, Result<ModelArtifacts, SourceError>> {
        Box::pin(async move { self.read() })
    }
}

/// Where a model comes from, as given by `--model` / `MODEL_URI`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelUri {
    /// The ETTh1 model compiled into the binary.
    Bundled,
    Directory(PathBuf),
    /// The S3 registry: a pinned version, or the `live` alias.
    S3(crate::registry::RegistryRef),
}

impl ModelUri {
    /// `bundled`, `file://DIR`, `s3://BUCKET/models/NAME[/VERSION]`, or a plain directory path.
    pub fn parse(uri: &str) -> Result<Self, SourceError> {
        if uri == "bundled" {
            return Ok(ModelUri::Bundled);
        }
        if let Some(path) = uri.strip_prefix("file://") {
            return Ok(ModelUri::Directory(PathBuf::from(path)));
        }
        if uri.starts_with("s3://") {
            return crate::registry::RegistryRef::parse(uri)
                .map(ModelUri::S3)
                .map_err(|e| SourceError::Remote(e.to_string()));
        }
        if uri.contains("://") {
            return Err(SourceError::UnsupportedUri(uri.to_string()));
        }
        Ok(ModelUri::Directory(PathBuf::from(uri)))
    }
}

/// Picks a source for a model URI. S3 sources load the AWS configuration (env, profile, role).
pub async fn open_source(uri: &ModelUri) -> Box<dyn ModelSource> {
    match uri {
        ModelUri::Bundled => Box::new(BundledSource),
        ModelUri::Directory(dir) => Box::new(DirectorySource::new(dir)),
        ModelUri::S3(model) => {
            let config = crate::aws::sdk_config().await;
            let registry =
                crate::registry::Registry::new(crate::aws::s3_client(&config), model.clone());
            Box::new(crate::registry::S3ModelSource::new(
                registry,
                crate::registry::default_cache_dir(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_pick_their_source() {
        assert_eq!(ModelUri::parse("bundled").unwrap(), ModelUri::Bundled);
        assert_eq!(
            ModelUri::parse("file:///m").unwrap(),
            ModelUri::Directory("/m".into())
        );
        assert_eq!(
            ModelUri::parse("models/m").unwrap(),
            ModelUri::Directory("models/m".into())
        );
        assert!(matches!(
            ModelUri::parse("s3://b/models/m").unwrap(),
            ModelUri::S3(_)
        ));
        assert!(matches!(
            ModelUri::parse("s3://b/m").unwrap_err(),
            SourceError::Remote(_)
        ));
        assert!(matches!(
            ModelUri::parse("ftp://x/y"),
            Err(SourceError::UnsupportedUri(_))
        ));
    }

    #[test]
    fn a_missing_directory_names_the_file() {
        let err = DirectorySource::new("/nonexistent/model")
            .read()
            .unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/model/model.json"),
            "{err}"
        );
    }
}
