//! The iceberg crate's file I/O (`iceberg::io::Storage`) on Weir's own object-store client
//! (`weir_engine::remote`), so an Iceberg warehouse on S3 takes the same settings and
//! credentials as the Parquet sink and checkpoints (the `AWS_*` environment and
//! `'storage.<key>'` options) and needs no second S3 client.

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use iceberg::io::{
    FileMetadata, FileRead, FileWrite, InputFile, OutputFile, Storage, StorageConfig,
    StorageFactory,
};
use iceberg::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::sync::{Arc, OnceLock};
use weir_engine::remote::Remote;

/// Paths under `root` (`s3://bucket`), through a [`Remote`] built on first use from
/// `options` (object_store's S3 keys) over the environment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectStorage {
    root: String,
    options: Vec<(String, String)>,
    #[serde(skip)]
    remote: Arc<OnceLock<Remote>>,
}

fn weir(e: weir_engine::WeirError) -> Error {
    Error::new(ErrorKind::Unexpected, "object storage").with_source(e)
}

impl ObjectStorage {
    pub fn new(root: String, options: Vec<(String, String)>) -> Self {
        ObjectStorage {
            root,
            options,
            remote: Arc::new(OnceLock::new()),
        }
    }

    fn remote(&self) -> Result<&Remote> {
        if let Some(r) = self.remote.get() {
            return Ok(r);
        }
        let r = Remote::new(&self.root, &self.options).map_err(weir)?;
        Ok(self.remote.get_or_init(|| r))
    }

    /// `path`'s key under the bucket.
    fn key(&self, path: &str) -> Result<String> {
        self.remote()?.relative_of(path).ok_or_else(|| {
            Error::new(
                ErrorKind::DataInvalid,
                format!("{path} is not in {}", self.root),
            )
        })
    }
}

#[async_trait]
#[typetag::serde]
impl Storage for ObjectStorage {
    async fn exists(&self, path: &str) -> Result<bool> {
        self.remote()?.exists(&self.key(path)?).await.map_err(weir)
    }

    async fn metadata(&self, path: &str) -> Result<FileMetadata> {
        match self.remote()?.size(&self.key(path)?).await.map_err(weir)? {
            Some(size) => Ok(FileMetadata { size }),
            None => Err(Error::new(
                ErrorKind::DataInvalid,
                format!("{path} does not exist"),
            )),
        }
    }

    async fn read(&self, path: &str) -> Result<Bytes> {
        match self.remote()?.get(&self.key(path)?).await.map_err(weir)? {
            Some(b) => Ok(Bytes::from(b)),
            None => Err(Error::new(
                ErrorKind::DataInvalid,
                format!("{path} does not exist"),
            )),
        }
    }

    async fn reader(&self, path: &str) -> Result<Box<dyn FileRead>> {
        Ok(Box::new(RangeReader {
            remote: self.remote()?.clone(),
            key: self.key(path)?,
        }))
    }

    async fn write(&self, path: &str, bs: Bytes) -> Result<()> {
        self.remote()?
            .put_at(&self.key(path)?, bs.to_vec())
            .await
            .map_err(weir)
    }

    async fn writer(&self, path: &str) -> Result<Box<dyn FileWrite>> {
        Ok(Box::new(BufferedWriter {
            remote: self.remote()?.clone(),
            key: self.key(path)?,
            buf: Vec::new(),
            closed: false,
        }))
    }

    async fn delete(&self, path: &str) -> Result<()> {
        self.remote()?.delete(&self.key(path)?).await.map_err(weir)
    }

    async fn delete_prefix(&self, path: &str) -> Result<()> {
        let remote = self.remote()?;
        for (key, _) in remote.list(&self.key(path)?).await.map_err(weir)? {
            remote.delete(&key).await.map_err(weir)?;
        }
        Ok(())
    }

    async fn delete_stream(&self, mut paths: BoxStream<'static, String>) -> Result<()> {
        while let Some(p) = paths.next().await {
            self.delete(&p).await?;
        }
        Ok(())
    }

    fn new_input(&self, path: &str) -> Result<InputFile> {
        Ok(InputFile::new(Arc::new(self.clone()), path.to_string()))
    }

    fn new_output(&self, path: &str) -> Result<OutputFile> {
        Ok(OutputFile::new(Arc::new(self.clone()), path.to_string()))
    }
}

struct RangeReader {
    remote: Remote,
    key: String,
}

#[async_trait]
impl FileRead for RangeReader {
    async fn read(&self, range: Range<u64>) -> Result<Bytes> {
        let b = self
            .remote
            .get_range(&self.key, range)
            .await
            .map_err(weir)?;
        Ok(Bytes::from(b))
    }
}

/// Collects what is written and puts it at close (metadata and manifest files are small).
struct BufferedWriter {
    remote: Remote,
    key: String,
    buf: Vec<u8>,
    closed: bool,
}

#[async_trait]
impl FileWrite for BufferedWriter {
    async fn write(&mut self, bs: Bytes) -> Result<()> {
        self.buf.extend_from_slice(&bs);
        Ok(())
    }

    async fn close(&mut self) -> Result<()> {
        if self.closed {
            return Err(Error::new(ErrorKind::Unexpected, "file closed twice"));
        }
        self.closed = true;
        let bytes = std::mem::take(&mut self.buf);
        self.remote.put_at(&self.key, bytes).await.map_err(weir)
    }
}

/// Builds [`ObjectStorage`] for a catalog.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectStorageFactory {
    pub root: String,
    pub options: Vec<(String, String)>,
}

#[typetag::serde]
impl StorageFactory for ObjectStorageFactory {
    fn build(&self, _config: &StorageConfig) -> Result<Arc<dyn Storage>> {
        Ok(Arc::new(ObjectStorage::new(
            self.root.clone(),
            self.options.clone(),
        )))
    }
}
