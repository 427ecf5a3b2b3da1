//! Object storage for sinks: a `path` that is a URL (`s3://bucket/prefix`) names a place in
//! an object store (S3 or a compatible server) through the `object_store` crate.
//!
//! Object stores have no rename, so a sink writing there works in a local outbox and ships
//! finished files: it writes, stages and publishes under `<data_dir>/outbox/<sink>/`
//! exactly as it would under a local path (the engine's staged-file protocol: a file is
//! published only when its checkpoint commits), and every published file is then uploaded
//! to the same relative key under the URL's prefix and removed from the outbox. So an
//! object appears only once its checkpoint has committed, and never half-written (a PUT or
//! a completed multipart upload is atomic). A crash after an upload and before the local
//! removal uploads the same bytes to the same key again: the object is unchanged. Files
//! staged for a checkpoint that never completed stay local and are removed at recovery.
//!
//! Credentials and settings come from the environment (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL`,
//! `AWS_ALLOW_HTTP`, ... as object_store reads them) or from the sink's
//! `'storage.<key>'` options (`'storage.aws_endpoint_url'`); they are never logged.

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use std::path::Path;
use std::sync::Arc;
use weir_engine::{Result, WeirError};

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
    store: Arc<dyn ObjectStore>,
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
        let files = weir_engine::fsutil::run_blocking("listing the outbox", move || {
            weir_engine::fsutil::files_below(&root)
        })
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
                .map_err(|e| weir_engine::fsutil::io_error("reading", &local, e))?;
            let key = self.key(&relative);
            self.put(&key, bytes).await?;
            weir_engine::fsutil::remove_file(&local)?;
            tracing::debug!(url = %self.url, %key, "uploaded");
            shipped += 1;
        }
        Ok(shipped)
    }

    /// Put `bytes` at `key`: whole, or as a multipart upload completed at the end (the
    /// object appears only then).
    async fn put(&self, key: &ObjectPath, bytes: Vec<u8>) -> Result<()> {
        let failed = |e: object_store::Error| {
            WeirError::external_source(format!("uploading {key} to {}", self.url), e)
        };
        if bytes.len() <= SINGLE_PUT_BYTES {
            self.store
                .put(key, PutPayload::from(bytes))
                .await
                .map_err(failed)?;
            return Ok(());
        }
        let upload = self.store.put_multipart(key).await.map_err(failed)?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        w.write(&bytes);
        w.finish().await.map_err(failed)?;
        Ok(())
    }
}
