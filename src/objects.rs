//! S3 objects: the one place that calls GetObject, PutObject, HeadObject and ListObjectsV2, and
//! turns the SDK's errors into an [`ObjectError`] that names the object and says whose problem it
//! is (missing, access denied, unreachable, a lost conditional write).
//!
//! The registry, the accuracy store and the batch jobs all read and write through [`S3Objects`].

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;

/// What went wrong with an object, as far as a caller can act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectErrorKind {
    /// No such key (or bucket).
    Missing,
    AccessDenied,
    /// Connection failure or time-out: retrying later may help.
    Unreachable,
    /// A conditional write lost to a concurrent writer.
    Conflict,
    /// Anything else S3 answered.
    Other,
}

/// A failed S3 call on one object (or prefix, for listings).
#[derive(Debug, thiserror::Error)]
#[error("{}", self.describe())]
pub struct ObjectError {
    pub kind: ObjectErrorKind,
    pub operation: &'static str,
    pub bucket: String,
    pub key: String,
    /// The SDK's own account of the failure, for the log.
    pub cause: String,
}

impl ObjectError {
    fn describe(&self) -> String {
        let (bucket, key, cause) = (&self.bucket, &self.key, &self.cause);
        match self.kind {
            ObjectErrorKind::Missing => format!("s3://{bucket}/{key} does not exist"),
            ObjectErrorKind::AccessDenied => format!(
                "access denied to s3://{bucket}/{key} (check the role's s3:GetObject/PutObject permissions)"
            ),
            ObjectErrorKind::Unreachable => {
                format!("S3 is unreachable for s3://{bucket}/{key}: {cause}")
            }
            ObjectErrorKind::Conflict => format!(
                "s3://{bucket}/{key} changed while it was being updated (concurrent writer?); retry"
            ),
            ObjectErrorKind::Other => format!(
                "S3 {} for s3://{bucket}/{key} failed: {cause}",
                self.operation
            ),
        }
    }

    pub fn is_missing(&self) -> bool {
        self.kind == ObjectErrorKind::Missing
    }

    fn new(
        kind: ObjectErrorKind,
        operation: &'static str,
        bucket: &str,
        key: &str,
        cause: String,
    ) -> Self {
        ObjectError {
            kind,
            operation,
            bucket: bucket.to_string(),
            key: key.to_string(),
            cause,
        }
    }

    fn classify<E, R>(operation: &'static str, err: SdkError<E, R>, bucket: &str, key: &str) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug + HttpStatus,
    {
        let cause = DisplayErrorContext(&err).to_string();
        let kind = match &err {
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
                ObjectErrorKind::Unreachable
            }
            SdkError::ServiceError(service) => match service.err().code() {
                Some("NoSuchKey" | "NotFound" | "NoSuchBucket") => ObjectErrorKind::Missing,
                Some("AccessDenied" | "Forbidden") => ObjectErrorKind::AccessDenied,
                Some("PreconditionFailed" | "ConditionalRequestConflict") => {
                    ObjectErrorKind::Conflict
                }
                // HEAD answers carry no body, so no code: only the status tells.
                _ => match service.raw().status_code() {
                    404 => ObjectErrorKind::Missing,
                    403 => ObjectErrorKind::AccessDenied,
                    412 => ObjectErrorKind::Conflict,
                    _ => ObjectErrorKind::Other,
                },
            },
            _ => ObjectErrorKind::Other,
        };
        ObjectError::new(kind, operation, bucket, key, cause)
    }
}

/// The status code of a raw response, whatever its type.
pub trait HttpStatus {
    fn status_code(&self) -> u16;
}

impl HttpStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

/// A write's precondition.
#[derive(Debug, Clone, Copy)]
pub enum Precondition<'a> {
    None,
    /// Only if the object still has this ETag (`If-Match`).
    Matches(&'a str),
    /// Only if no object exists yet (`If-None-Match: *`).
    Absent,
}

/// An object's bytes, ETag and user metadata (`x-amz-meta-*`).
#[derive(Debug, Clone)]
pub struct Object {
    pub bytes: Vec<u8>,
    pub etag: Option<String>,
    pub metadata: std::collections::HashMap<String, String>,
}

/// A listed object: its key and when it was last written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    pub last_modified: chrono::DateTime<chrono::Utc>,
}

/// One bucket's objects.
#[derive(Clone)]
pub struct S3Objects {
    client: crate::aws::Shared<aws_sdk_s3::Client>,
    bucket: String,
}

impl S3Objects {
    pub fn new(
        client: impl Into<crate::aws::Shared<aws_sdk_s3::Client>>,
        bucket: impl Into<String>,
    ) -> Self {
        S3Objects {
            client: client.into(),
            bucket: bucket.into(),
        }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The client to use now (see [`crate::aws::Shared`]).
    pub fn client(&self) -> aws_sdk_s3::Client {
        self.client.current()
    }

    async fn get_object(
        &self,
        key: &str,
    ) -> Result<aws_sdk_s3::operation::get_object::GetObjectOutput, ObjectError> {
        self.client()
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| ObjectError::classify("GetObject", e, &self.bucket, key))
    }

    /// Reads a whole object.
    pub async fn get(&self, key: &str) -> Result<Object, ObjectError> {
        let output = self.get_object(key).await?;
        let etag = output.e_tag().map(str::to_owned);
        let metadata = output.metadata().cloned().unwrap_or_default();
        let bytes = output.body.collect().await.map_err(|e| {
            ObjectError::new(
                ObjectErrorKind::Unreachable,
                "GetObject",
                &self.bucket,
                key,
                format!("reading the body: {e}"),
            )
        })?;
        Ok(Object {
            bytes: bytes.into_bytes().to_vec(),
            etag,
            metadata,
        })
    }

    /// Reads a whole object, `None` when it does not exist.
    pub async fn get_if_exists(&self, key: &str) -> Result<Option<Object>, ObjectError> {
        match self.get(key).await {
            Ok(object) => Ok(Some(object)),
            Err(e) if e.is_missing() => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn exists(&self, key: &str) -> Result<bool, ObjectError> {
        match self
            .client()
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) => match ObjectError::classify("HeadObject", e, &self.bucket, key) {
                e if e.is_missing() => Ok(false),
                e => Err(e),
            },
        }
    }

    pub async fn put(
        &self,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
        precondition: Precondition<'_>,
    ) -> Result<(), ObjectError> {
        self.put_with_metadata(key, body, content_type, precondition, &[])
            .await
    }

    /// [`Self::put`] with user metadata (`x-amz-meta-NAME: VALUE`).
    pub async fn put_with_metadata(
        &self,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
        precondition: Precondition<'_>,
        metadata: &[(&str, String)],
    ) -> Result<(), ObjectError> {
        let mut request = self
            .client()
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body));
        for (name, value) in metadata {
            request = request.metadata(*name, value);
        }
        let request = match precondition {
            Precondition::None => request,
            Precondition::Matches(etag) => request.if_match(etag),
            Precondition::Absent => request.if_none_match("*"),
        };
        request
            .send()
            .await
            .map_err(|e| ObjectError::classify("PutObject", e, &self.bucket, key))?;
        Ok(())
    }

    /// Opens an object for reading as a stream, so a large object never has to fit in memory.
    /// A failure while reading the body surfaces as an `io::Error` from the reader.
    pub async fn open(
        &self,
        key: &str,
    ) -> Result<impl tokio::io::AsyncBufRead + Send + Unpin + 'static, ObjectError> {
        let output = self.get_object(key).await?;
        Ok(tokio::io::BufReader::with_capacity(
            256 * 1024,
            output.body.into_async_read(),
        ))
    }

    /// Starts a multipart upload to `key`: nothing is visible at `key` until
    /// [`MultipartUpload::complete`], and [`MultipartUpload::abort`] leaves nothing behind.
    pub async fn start_upload(
        &self,
        key: &str,
        content_type: &str,
    ) -> Result<MultipartUpload, ObjectError> {
        let created = self
            .client()
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .send()
            .await
            .map_err(|e| ObjectError::classify("CreateMultipartUpload", e, &self.bucket, key))?;
        let upload_id = created.upload_id().ok_or_else(|| {
            ObjectError::new(
                ObjectErrorKind::Other,
                "CreateMultipartUpload",
                &self.bucket,
                key,
                "the answer has no UploadId".into(),
            )
        })?;
        Ok(MultipartUpload {
            objects: self.clone(),
            key: key.to_owned(),
            upload_id: upload_id.to_owned(),
            parts: Vec::new(),
        })
    }

    /// The objects under `prefix` whose keys sort after `start_after` and before `stop_at` (either
    /// bound optional), with their last-modified times, in key order. ListObjectsV2 returns keys in
    /// order, so a range costs what it holds, not what the whole prefix holds.
    pub async fn list_range(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        stop_at: Option<&str>,
    ) -> Result<Vec<Listed>, ObjectError> {
        let mut listed = Vec::new();
        let mut pages = self
            .client()
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .set_start_after(start_after.map(str::to_owned))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page =
                page.map_err(|e| ObjectError::classify("ListObjectsV2", e, &self.bucket, prefix))?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                if stop_at.is_some_and(|stop| key >= stop) {
                    return Ok(listed);
                }
                let last_modified = object
                    .last_modified()
                    .and_then(|t| chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos()))
                    .unwrap_or_default();
                listed.push(Listed {
                    key: key.to_owned(),
                    last_modified,
                });
            }
        }
        Ok(listed)
    }

    /// Every key under `prefix`, in key order.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, ObjectError> {
        let listed = self.list_range(prefix, None, None).await?;
        Ok(listed.into_iter().map(|l| l.key).collect())
    }
}

/// An S3 multipart upload in progress ([`S3Objects::start_upload`]).
///
/// S3 requires every part but the last to be at least 5 MiB; the caller sizes its parts.
pub struct MultipartUpload {
    objects: S3Objects,
    key: String,
    upload_id: String,
    parts: Vec<aws_sdk_s3::types::CompletedPart>,
}

impl MultipartUpload {
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Uploads the next part (numbered from 1, in call order).
    pub async fn upload_part(&mut self, bytes: Vec<u8>) -> Result<(), ObjectError> {
        let number = self.parts.len() as i32 + 1;
        let (bucket, key) = (self.objects.bucket(), self.key.as_str());
        let uploaded = self
            .objects
            .client()
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(&self.upload_id)
            .part_number(number)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| ObjectError::classify("UploadPart", e, bucket, key))?;
        self.parts.push(
            aws_sdk_s3::types::CompletedPart::builder()
                .part_number(number)
                .set_e_tag(uploaded.e_tag().map(str::to_owned))
                .build(),
        );
        Ok(())
    }

    /// Makes the object visible at its key, whole (it replaces any earlier object there).
    pub async fn complete(&self) -> Result<(), ObjectError> {
        let (bucket, key) = (self.objects.bucket(), self.key.as_str());
        self.objects
            .client()
            .complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(&self.upload_id)
            .multipart_upload(
                aws_sdk_s3::types::CompletedMultipartUpload::builder()
                    .set_parts(Some(self.parts.clone()))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| ObjectError::classify("CompleteMultipartUpload", e, bucket, key))?;
        Ok(())
    }

    /// Discards the parts uploaded so far; the key keeps whatever it held before.
    pub async fn abort(self) -> Result<(), ObjectError> {
        let (bucket, key) = (self.objects.bucket(), self.key.as_str());
        self.objects
            .client()
            .abort_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(&self.upload_id)
            .send()
            .await
            .map_err(|e| ObjectError::classify("AbortMultipartUpload", e, bucket, key))?;
        Ok(())
    }
}
