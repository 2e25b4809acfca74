//! Where batch jobs may read and write: every URI a job touches is confined to the prefixes of
//! its [`BatchConfig`], so a scheduled event cannot read the registry or overwrite the alias.

use crate::service::jobs::JobError;

/// Where batch jobs may read and write, and how they cut their output.
#[derive(Debug, Clone, Default)]
pub struct BatchConfig {
    /// `s3://BUCKET/PREFIX/` that inputs must lie under; `None` refuses batch jobs.
    pub input_prefix: Option<String>,
    /// `s3://BUCKET/PREFIX/` that outputs must lie under; `None` refuses batch jobs.
    pub output_prefix: Option<String>,
    /// Bytes per uploaded part of a shard's output (S3's minimum is 5 MiB).
    pub part_bytes: usize,
}

/// Which side of a job a URI is on; names the setting that confines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Input,
    Output,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Input => "input",
            Side::Output => "output",
        }
    }

    fn variable(self) -> &'static str {
        match self {
            Side::Input => "BATCH_INPUT_PREFIX",
            Side::Output => "BATCH_OUTPUT_PREFIX",
        }
    }
}

impl BatchConfig {
    fn prefix(&self, side: Side) -> Option<&str> {
        match side {
            Side::Input => self.input_prefix.as_deref(),
            Side::Output => self.output_prefix.as_deref(),
        }
    }

    /// Refuses an object URI outside its side's prefix.
    pub fn confine(&self, uri: &str, side: Side) -> Result<(), JobError> {
        confine_within(uri, self.prefix(side), side, false)
    }

    /// [`BatchConfig::confine`] for a folder, which may also be the allowed prefix itself.
    pub fn confine_folder(&self, uri: &str, side: Side) -> Result<(), JobError> {
        confine_within(uri, self.prefix(side), side, true)
    }

    /// A run's folder URI (ending in `/`, strictly under its side's prefix) as a bucket and a key
    /// prefix.
    pub fn folder(&self, uri: &str, side: Side) -> Result<(String, String), JobError> {
        if !uri.ends_with('/') {
            return Err(JobError::InvalidInput(format!(
                "{} `{uri}` must be a folder (end with `/`): each shard writes its own object under it",
                side.name()
            )));
        }
        // A run's own folder, never the whole prefix: runs must not write over each other.
        self.confine(uri, side)?;
        Ok(crate::aws::parse_s3_url(uri).expect("confine accepted an s3:// URL"))
    }
}

fn confine_within(
    uri: &str,
    prefix: Option<&str>,
    side: Side,
    may_be_the_prefix: bool,
) -> Result<(), JobError> {
    let (what, variable) = (side.name(), side.variable());
    let Some(prefix) = prefix else {
        return Err(JobError::NotConfigured(format!(
            "batch jobs are off: set {variable}=s3://BUCKET/PREFIX/ to allow them"
        )));
    };
    // Compare bucket and key apart, and the key as a whole path segment prefix: s3://b/batch/out
    // must not admit s3://b/batch/outside.
    let (Some((bucket, key)), Some((allowed_bucket, allowed_key))) = (
        crate::aws::parse_s3_url(uri),
        crate::aws::parse_s3_url(prefix),
    ) else {
        return Err(JobError::InvalidInput(format!(
            "{what} `{uri}` is not an s3:// URL under {variable} ({prefix})"
        )));
    };
    // A bucket name has no `/`; a key with `.`/`..` segments or control characters could mean
    // another object to a store that normalises paths.
    if bucket.contains('/')
        || key
            .split('/')
            .any(|segment| segment == "." || segment == "..")
        || key.chars().any(char::is_control)
    {
        return Err(JobError::Forbidden(format!(
            "{what} `{uri}` has dot segments, control characters or a `/` in its bucket: refused"
        )));
    }
    let allowed_key = if allowed_key.is_empty() || allowed_key.ends_with('/') {
        allowed_key
    } else {
        format!("{allowed_key}/")
    };
    if bucket != allowed_bucket
        || !key.starts_with(&allowed_key)
        || (key.len() == allowed_key.len() && !may_be_the_prefix)
    {
        return Err(JobError::Forbidden(format!(
            "{what} `{uri}` is outside {variable} ({prefix}): refused"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_uris_are_confined_to_their_prefix() {
        let config = BatchConfig {
            output_prefix: Some("s3://b/batch/output/".into()),
            ..BatchConfig::default()
        };
        assert!(config
            .confine("s3://b/batch/output/run-1/f.jsonl", Side::Output)
            .is_ok());
        for outside in [
            "s3://b/models/m/alias/live.json",
            "s3://b/batch/outputs.jsonl",
            "s3://b/batch/output/",
            "s3://other/batch/output/f.jsonl",
            "https://b/batch/output/f.jsonl",
        ] {
            assert!(config.confine(outside, Side::Output).is_err(), "{outside}");
        }
        // A prefix given without its trailing slash still means a folder.
        let unslashed = BatchConfig {
            output_prefix: Some("s3://b/batch/output".into()),
            ..BatchConfig::default()
        };
        assert!(unslashed
            .confine("s3://b/batch/outputx", Side::Output)
            .is_err());
        let off = BatchConfig::default()
            .confine("s3://b/batch/output/f", Side::Output)
            .unwrap_err();
        assert_eq!(off.kind(), "NotConfigured");
        assert!(off.to_string().contains("BATCH_OUTPUT_PREFIX"), "{off}");
    }
}
