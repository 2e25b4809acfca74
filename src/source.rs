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
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unsupported model URI `{0}` (use `bundled`, a directory, or file://DIR)")]
    UnsupportedUri(String),
}

/// The ETTh1 model compiled into the binary: `make run` and tests need no files or network.
pub struct BundledSource;

pub const BUNDLED_MODEL_JSON: &[u8] =
    include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/model_artifacts/etth1-ot-lstm/model.json"));
pub const BUNDLED_MODEL_PT: &[u8] =
    include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/model_artifacts/etth1-ot-lstm/model.pt"));

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
    std::fs::read(path).map_err(|source| SourceError::Io {
        path: path.to_path_buf(),
        source,
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

/// Picks a source from a model URI: `bundled`, `file://DIR`, or a plain directory path.
pub fn source_for_uri(uri: &str) -> Result<Box<dyn ModelSource>, SourceError> {
    if uri == "bundled" {
        return Ok(Box::new(BundledSource));
    }
    if let Some(path) = uri.strip_prefix("file://") {
        return Ok(Box::new(DirectorySource::new(path)));
    }
    if uri.contains("://") {
        return Err(SourceError::UnsupportedUri(uri.to_string()));
    }
    Ok(Box::new(DirectorySource::new(uri)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_pick_their_source() {
        assert_eq!(source_for_uri("bundled").unwrap().describe(), "bundled");
        assert_eq!(source_for_uri("file:///m").unwrap().describe(), "file:///m");
        assert_eq!(source_for_uri("models/m").unwrap().describe(), "file://models/m");
        assert!(matches!(
            source_for_uri("ftp://x/y"),
            Err(SourceError::UnsupportedUri(_))
        ));
    }

    #[test]
    fn a_missing_directory_names_the_file() {
        let err = DirectorySource::new("/nonexistent/model").read().unwrap_err();
        assert!(err.to_string().contains("/nonexistent/model/model.json"), "{err}");
    }
}
