//! Sources on this machine: the model compiled into the binary, and model directories.

use std::path::{Path, PathBuf};

use super::port::{BoxFuture, Fetched, ModelSource, SourceError};
use crate::model::ModelArtifacts;

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

    fn fetch(&self) -> BoxFuture<'_, Result<Fetched, SourceError>> {
        Box::pin(async {
            Ok(Fetched {
                artifacts: ModelArtifacts {
                    metadata_json: BUNDLED_MODEL_JSON.to_vec(),
                    model_pt: BUNDLED_MODEL_PT.to_vec(),
                },
                from_cache: true,
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

    fn fetch(&self) -> BoxFuture<'_, Result<Fetched, SourceError>> {
        Box::pin(async move {
            Ok(Fetched {
                artifacts: self.read()?,
                from_cache: true,
            })
        })
    }
}
