//! The model-source port: a source fetches a model's two files; nothing more.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use crate::model::ModelArtifacts;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Fetches a model's two files.
pub trait ModelSource: Send + Sync {
    /// Human-readable location for logs and errors (`file:///...`, `s3://...`, `bundled`).
    fn describe(&self) -> String;
    fn fetch(&self) -> BoxFuture<'_, Result<Fetched, SourceError>>;
}

/// A model's files, and whether they came without a download.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub artifacts: ModelArtifacts,
    /// True for local sources and for a registry version found in the on-disk cache.
    pub from_cache: bool,
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
    #[error("invalid model URI: {0}")]
    InvalidS3Uri(crate::registry::RegistryError),
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
}
