//! Object storage: a path that is a URL (`s3://bucket/prefix`) names a place in an object
//! store (S3 or a compatible server) through the `object_store` crate. Sinks, checkpoints
//! (`crate::checkpoint`) and the Iceberg sink's warehouse write there.
//!
//! Object stores have no rename, so a Parquet sink writing there works in a local outbox:
//! it writes and stages under `<data_dir>/outbox/<sink>/` exactly as it would under a local
//! path (the engine's staged-file protocol, `crate::fsutil`). In a checkpointed pipeline
//! each staged file is uploaded at the checkpoint's pre-commit as a multipart upload that
//! is *not* completed ([`Remote::stage`]): its parts are in the store, its id and part tags
//! in the checkpoint, and nobody can see it. The checkpoint's commit completes it
//! ([`Remote::complete`]), which makes the whole object appear at once. A restart, on this
//! machine or another one reading the same checkpoints, completes the uploads the restored
//! checkpoint recorded (completing one already complete is fine); uploads begun for a
//! checkpoint that never completed stay invisible until the bucket's lifecycle rule for
//! incomplete multipart uploads removes them (docs/lake.md). Without checkpoints a sink's
//! published files are uploaded as they are published ([`Remote::ship`]).
//!
//! Credentials and settings come from the environment (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL`,
//! `AWS_ALLOW_HTTP`, ... as object_store reads them) or from `'storage.<key>'` options;
//! they are never logged.

use crate::error::{Result, WeirError};
use crate::fsutil;
use futures::TryStreamExt;
use object_store::aws::AmazonS3;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

/// The sink option prefix passed to the object store's builder.
pub const STORAGE_PREFIX: &str = "storage.";

/// Files up to this size go up in one PUT; bigger ones as a multipart upload.
const SINGLE_PUT_BYTES: usize = 32 << 20;
/// The part size of a multipart upload.
const PART_BYTES: usize = 16 << 20;

/// Whether a sink path names an object store rather than a local directory.
pub fn is_url(path: &str) -> bool {
    path.contains("://")
}

/// A prefix in an object store.
#[derive(Clone)]
pub struct Remote {
    store: Arc<AmazonS3>,
    prefix: ObjectPath,
    /// The URL as given (no credentials are ever in it), for messages.
    url: String,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("url", &self.url).finish()
    }
}

impl Remote {
    /// The store and prefix of `url` (`s3://bucket/prefix` or `s3a://...`), configured
    /// from the environment and then `options` (object_store's S3 configuration keys,
    /// without the `storage.` prefix).
    pub fn new(url: &str, options: &[(String, String)]) -> Result<Remote> {
        let parsed = url::Url::parse(url)
            .map_err(|e| WeirError::user(format!("'{url}' is not a URL: {e}")))?;
        match parsed.scheme() {
            "s3" | "s3a" => {}
            other => {
                return Err(WeirError::user(format!(
                    "'{url}': object storage '{other}://' is not supported yet; use s3:// \
                     (Amazon S3 and S3-compatible servers) or a local directory"
                )));
            }
        }
        let mut builder = object_store::aws::AmazonS3Builder::from_env().with_url(url);
        for (k, v) in options {
            let key = k.parse().map_err(|_| {
                WeirError::user(format!(
                    "'{STORAGE_PREFIX}{k}' is not an S3 setting (object_store's keys, such as \
                     aws_endpoint_url, aws_region, aws_allow_http)"
                ))
            })?;
            builder = builder.with_config(key, v);
        }
        let store = builder.build().map_err(|e| {
            WeirError::user(format!("'{url}': cannot set up the object store: {e}"))
        })?;
        let prefix = ObjectPath::from(parsed.path().trim_start_matches('/'));
        Ok(Remote {
            store: Arc::new(store),
            prefix,
            url: url.to_string(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The same store, `sub` deeper.
    pub fn join(&self, sub: &str) -> Remote {
        Remote {
            store: self.store.clone(),
            prefix: self.prefix.clone().join(sub),
            url: format!("{}/{sub}", self.url.trim_end_matches('/')),
        }
    }

    /// The key of `relative` (a path under the outbox) under the prefix.
    fn key(&self, relative: &Path) -> ObjectPath {
        let mut key = self.prefix.clone();
        for part in relative.iter() {
            key = key.join(part.to_string_lossy().as_ref());
        }
        key
    }

    /// Upload every file under `outbox` that `is_hidden` does not match to its key, and
    /// remove it locally once it is up. Returns how many went.
    pub async fn ship(&self, outbox: &Path, is_hidden: fn(&str) -> bool) -> Result<usize> {
        let root = outbox.to_path_buf();
        let files = fsutil::run_blocking("listing the outbox", move || fsutil::files_below(&root))
            .await??;
        let mut shipped = 0;
        for relative in files {
            let hidden = relative
                .file_name()
                .is_some_and(|n| is_hidden(&n.to_string_lossy()));
            if hidden {
                continue;
            }
            let local = outbox.join(&relative);
            let bytes = tokio::fs::read(&local)
                .await
                .map_err(|e| fsutil::io_error("reading", &local, e))?;
            let key = self.key(&relative);
            self.put(&key, bytes).await?;
            fsutil::remove_file(&local)?;
            tracing::debug!(url = %self.url, %key, "uploaded");
            shipped += 1;
        }
        Ok(shipped)
    }

    /// The key of `relative` (`a/b.json`) under the prefix.
    fn key_of(&self, relative: &str) -> ObjectPath {
        relative
            .split('/')
            .filter(|p| !p.is_empty())
            .fold(self.prefix.clone(), |k, p| k.join(p))
    }

    fn failed(
        &self,
        doing: &str,
        what: &dyn std::fmt::Display,
    ) -> impl Fn(object_store::Error) -> WeirError {
        let context = format!("{doing} {what} in {}", self.url);
        move |e| WeirError::external_source(context.clone(), e)
    }

    /// Put `bytes` at `relative` (a `/`-separated path under the prefix).
    pub async fn put_at(&self, relative: &str, bytes: Vec<u8>) -> Result<()> {
        self.put(&self.key_of(relative), bytes).await
    }

    /// The object at `relative`, or `None` if there is none.
    pub async fn get(&self, relative: &str) -> Result<Option<Vec<u8>>> {
        let key = self.key_of(relative);
        match self.store.get(&key).await {
            Ok(r) => {
                let bytes = r.bytes().await.map_err(self.failed("reading", &key))?;
                Ok(Some(bytes.to_vec()))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.failed("reading", &key)(e)),
        }
    }

    /// Whether there is an object at `relative`.
    pub async fn exists(&self, relative: &str) -> Result<bool> {
        self.exists_key(&self.key_of(relative)).await
    }

    /// The size of the object at `relative`, or `None` if there is none.
    pub async fn size(&self, relative: &str) -> Result<Option<u64>> {
        let key = self.key_of(relative);
        match self.store.head(&key).await {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.failed("looking up", &key)(e)),
        }
    }

    /// Bytes `range` of the object at `relative`.
    pub async fn get_range(&self, relative: &str, range: std::ops::Range<u64>) -> Result<Vec<u8>> {
        let key = self.key_of(relative);
        let bytes = self
            .store
            .get_range(&key, range)
            .await
            .map_err(self.failed("reading", &key))?;
        Ok(bytes.to_vec())
    }

    /// The path under the prefix of `url`, a URL in the same bucket (`s3://bucket/a/b`),
    /// or `None` if it is elsewhere.
    pub fn relative_of(&self, url: &str) -> Option<String> {
        let root = self.url.trim_end_matches('/');
        let rest = url.strip_prefix(root)?;
        if rest.is_empty() {
            return Some(String::new());
        }
        rest.strip_prefix('/').map(str::to_string)
    }

    async fn exists_key(&self, key: &ObjectPath) -> Result<bool> {
        match self.store.head(key).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.failed("looking up", key)(e)),
        }
    }

    /// Every object under `relative` (recursively): its path relative to the prefix
    /// (`/`-separated) and size, sorted by path.
    pub async fn list(&self, relative: &str) -> Result<Vec<(String, u64)>> {
        let under = self.key_of(relative);
        let found: Vec<_> = self
            .store
            .list(Some(&under))
            .try_collect()
            .await
            .map_err(self.failed("listing", &under))?;
        let mut out: Vec<(String, u64)> = found
            .into_iter()
            .filter_map(|m| {
                let rel: Vec<String> = m
                    .location
                    .prefix_match(&self.prefix)?
                    .map(|p| p.as_ref().to_string())
                    .collect();
                Some((rel.join("/"), m.size))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Delete the object at `relative`; none there is fine.
    pub async fn delete(&self, relative: &str) -> Result<()> {
        let key = self.key_of(relative);
        match self.store.delete(&key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.failed("deleting", &key)(e)),
        }
    }

    /// Upload `bytes` to `relative` as a multipart upload and leave it incomplete: the
    /// object does not exist until [`Self::complete`] (see the module docs).
    pub async fn stage(&self, relative: &str, bytes: Vec<u8>) -> Result<PendingUpload> {
        let key = self.key_of(relative);
        let failed = self.failed("staging", &key);
        let id = self.store.create_multipart(&key).await.map_err(&failed)?;
        let payload = bytes::Bytes::from(bytes);
        let mut parts = Vec::new();
        let mut at = 0;
        // S3 wants at least one part, and every part but the last at least 5 MB.
        loop {
            let end = (at + PART_BYTES).min(payload.len());
            let part = self
                .store
                .put_part(
                    &key,
                    &id,
                    parts.len(),
                    PutPayload::from(payload.slice(at..end)),
                )
                .await
                .map_err(&failed)?;
            parts.push(part.content_id);
            at = end;
            if at >= payload.len() {
                break;
            }
        }
        Ok(PendingUpload {
            relative: relative.to_string(),
            id,
            parts,
        })
    }

    /// Complete a staged upload: the object appears, whole. Completing one that was
    /// completed before (a commit repeated after a crash) is fine.
    pub async fn complete(&self, upload: &PendingUpload) -> Result<()> {
        let key = self.key_of(&upload.relative);
        let parts = upload
            .parts
            .iter()
            .map(|p| PartId {
                content_id: p.clone(),
            })
            .collect();
        match self.store.complete_multipart(&key, &upload.id, parts).await {
            Ok(_) => Ok(()),
            // The upload is gone: completed before (the object is there) or lost.
            Err(e) => {
                if self.exists_key(&key).await? {
                    Ok(())
                } else {
                    Err(self.failed("completing the upload of", &key)(e))
                }
            }
        }
    }

    /// Abandon a staged upload (its parts are removed; the object never appears).
    pub async fn abort(&self, upload: &PendingUpload) -> Result<()> {
        let key = self.key_of(&upload.relative);
        match self.store.abort_multipart(&key, &upload.id).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.failed("abandoning the upload of", &key)(e)),
        }
    }

    /// Put `bytes` at `key`: whole, or as a multipart upload completed at the end (the
    /// object appears only then).
    async fn put(&self, key: &ObjectPath, bytes: Vec<u8>) -> Result<()> {
        let failed = self.failed("uploading", key);
        if bytes.len() <= SINGLE_PUT_BYTES {
            self.store
                .put(key, PutPayload::from(bytes))
                .await
                .map_err(failed)?;
            return Ok(());
        }
        let upload = self.store.put_multipart(key).await.map_err(&failed)?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        w.write(&bytes);
        w.finish().await.map_err(failed)?;
        Ok(())
    }
}

/// A multipart upload staged and not completed: what a checkpoint records to complete it
/// later, possibly from another process or machine.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PendingUpload {
    /// The object's path under the remote's prefix.
    pub relative: String,
    /// The store's upload id.
    pub id: String,
    /// The parts' tags, in order.
    pub parts: Vec<String>,
}

/// Run `f` to completion from synchronous code (a blocking thread, or startup code that is
/// not async), on the current Tokio runtime, which the object store's client needs. Runs on
/// a scoped thread of its own so it may be called from anywhere, an async worker included
/// (which it then blocks: keep such calls to startup and checkpoint threads).
pub fn block_on<T: Send>(f: impl std::future::Future<Output = Result<T>> + Send) -> Result<T> {
    let handle = tokio::runtime::Handle::try_current()
        .map_err(|_| WeirError::Internal("object storage used outside a Tokio runtime".into()))?;
    std::thread::scope(|s| {
        s.spawn(|| handle.block_on(f))
            .join()
            .map_err(|_| WeirError::Internal("object storage call panicked".into()))?
    })
}
