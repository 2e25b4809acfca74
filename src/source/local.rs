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
pub const BUNDLED_MODEL_ONNX: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/model_artifacts/etth1-ot-lstm/model.onnx"
));

/// The bundled model's files.
pub fn bundled_artifacts() -> ModelArtifacts {
    ModelArtifacts {
        metadata_json: BUNDLED_MODEL_JSON.to_vec(),
        model_pt: BUNDLED_MODEL_PT.to_vec(),
        model_onnx: Some(BUNDLED_MODEL_ONNX.to_vec()),
        // Built into the binary, so no signature: with MODEL_VERIFY_KEY set it does not load.
        signature: None,
    }
}

impl ModelSource for BundledSource {
    fn describe(&self) -> String {
        "bundled".into()
    }

    fn fetch(&self) -> BoxFuture<'_, Result<Fetched, SourceError>> {
        Box::pin(async {
            Ok(Fetched {
                artifacts: bundled_artifacts(),
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
        let metadata_json = read(&self.dir.join("model.json"))?;
        let model_onnx = match declares_onnx(&metadata_json) {
            true => Some(read(&self.dir.join("model.onnx"))?),
            false => None,
        };
        let signature_path = self.dir.join(crate::model::signature::SIGNATURE_FILE);
        let signature = match signature_path.exists() {
            true => Some(read(&signature_path)?),
            false => None,
        };
        Ok(ModelArtifacts {
            metadata_json,
            model_pt: read(&self.dir.join("model.pt"))?,
            model_onnx,
            signature,
        })
    }
}

/// Whether `model.json` names a `model.onnx`. An unreadable contract says no: loading it reports
/// what is wrong with it.
pub(crate) fn declares_onnx(metadata_json: &[u8]) -> bool {
    crate::model::contract::ModelMetadata::from_json(metadata_json)
        .is_ok_and(|metadata| metadata.onnx_sha256.is_some())
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
