//! The model-source port: where `model.json`, `model.pt` and `model.onnx` come from.
//!
//! Sources only fetch bytes; checking and loading is [`crate::model::Model::load`]'s job, so every
//! source gets the same checks.
//!
//! - [`port`]: the [`ModelSource`] trait and its errors;
//! - [`local`]: the bundled model and model directories;
//! - [`s3`]: the S3 registry as a source, with its on-disk cache;
//! - this module: model URIs, and [`open`], which picks a source for one.

pub mod local;
pub mod port;
pub mod s3;

pub use local::{
    bundled_artifacts, BundledSource, DirectorySource, BUNDLED_MODEL_JSON, BUNDLED_MODEL_ONNX,
    BUNDLED_MODEL_PT,
};
pub use port::{BoxFuture, Fetched, ModelSource, SourceError};

use std::path::{Path, PathBuf};

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
                .map_err(SourceError::InvalidS3Uri);
        }
        if uri.contains("://") {
            return Err(SourceError::UnsupportedUri(uri.to_string()));
        }
        Ok(ModelUri::Directory(PathBuf::from(uri)))
    }
}

/// Picks a source for a model URI. S3 sources use `clients` and cache under `cache_dir`.
pub fn open(
    uri: &ModelUri,
    cache_dir: &Path,
    clients: &crate::aws::AwsClients,
) -> Box<dyn ModelSource> {
    match uri {
        ModelUri::Bundled => Box::new(BundledSource),
        ModelUri::Directory(dir) => Box::new(DirectorySource::new(dir)),
        ModelUri::S3(model) => {
            let registry = crate::registry::Registry::new(clients.s3().clone(), model.clone());
            Box::new(s3::S3ModelSource::new(registry, cache_dir.to_path_buf()))
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
            SourceError::InvalidS3Uri(_)
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
