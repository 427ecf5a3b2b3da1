//! A real S3-compatible object store (s3s-fs, started by scripts/test.sh through
//! scripts/s3.sh; its endpoint and bucket come in WEIR_S3_ENDPOINT and WEIR_S3_BUCKET, the
//! test key, region and AWS_ALLOW_HTTP in the usual AWS_* variables), driven by the
//! `object_store` crate's S3 client, the one DataFusion uses: put and read back byte for
//! byte, ranged reads, a multipart upload of more than 10 MB in several parts, listing by
//! prefix and by delimiter, copy, delete, and conditional puts and copies.
//!
//! Each test works under a prefix of its own and deletes it at the end.

#![allow(clippy::unwrap_used)]

use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, S3CopyIfNotExists};
use object_store::path::Path;
use object_store::{
    Error, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig, UpdateVersion,
};
use std::collections::BTreeSet;
use std::time::Duration;

const MIB: usize = 1024 * 1024;

/// The endpoint and bucket, or `None` (test skipped) outside CI when no store is set up.
fn s3_env() -> Option<(String, String)> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    match (var("WEIR_S3_ENDPOINT"), var("WEIR_S3_BUCKET")) {
        (Some(endpoint), Some(bucket)) => {
            for name in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
                assert!(
                    var(name).is_some(),
                    "WEIR_S3_ENDPOINT is set but {name} is not: eval \"$(scripts/s3.sh env)\""
                );
            }
            Some((endpoint, bucket))
        }
        _ if weir_tests::in_ci() => panic!(
            "WEIR_S3_ENDPOINT or WEIR_S3_BUCKET is not set: CI must run these tests against a \
             real S3-compatible store (scripts/test.sh starts one with scripts/s3.sh)"
        ),
        _ => {
            eprintln!(
                "SKIPPED: no S3-compatible store (WEIR_S3_ENDPOINT unset); run scripts/test.sh, \
                 or scripts/s3.sh start && eval \"$(scripts/s3.sh env)\""
            );
            None
        }
    }
}

/// The S3 client as a user would configure it: credentials, region and AWS_ALLOW_HTTP from
/// the AWS_* environment, the endpoint (path-style requests) and bucket from WEIR_S3_*.
/// Few retries, so that a store that went away fails the test quickly.
fn builder(endpoint: &str, bucket: &str) -> AmazonS3Builder {
    AmazonS3Builder::from_env()
        .with_endpoint(endpoint)
        .with_bucket_name(bucket)
        .with_retry(RetryConfig {
            max_retries: 2,
            retry_timeout: Duration::from_secs(20),
            ..Default::default()
        })
}

fn store() -> Option<AmazonS3> {
    let (endpoint, bucket) = s3_env()?;
    Some(builder(&endpoint, &bucket).build().unwrap())
}

/// A prefix no other test or run uses.
fn unique_prefix(test: &str) -> Path {
    Path::from(format!(
        "weir-tests/object-store-s3/{test}-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_micros()
    ))
}

/// `len` deterministic pseudo-random bytes (xorshift64*), different for each `seed`, so
/// that a part written twice, out of order or cut short shows in a byte comparison.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

async fn read_all(store: &AmazonS3, path: &Path) -> Vec<u8> {
    store
        .get(path)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
        .bytes()
        .await
        .unwrap()
        .to_vec()
}

async fn list_paths(store: &AmazonS3, prefix: &Path) -> BTreeSet<String> {
    store
        .list(Some(prefix))
        .map_ok(|meta| meta.location.to_string())
        .try_collect()
        .await
        .unwrap()
}

/// Deletes everything under `prefix` with bulk deletes (DeleteObjects), and checks that
/// nothing is left.
async fn delete_prefix(store: &AmazonS3, prefix: &Path) {
    let locations = store
        .list(Some(prefix))
        .map_ok(|meta| meta.location)
        .boxed();
    let deleted: Vec<Path> = store.delete_stream(locations).try_collect().await.unwrap();
    assert!(!deleted.is_empty(), "nothing to delete under {prefix}");
    assert_eq!(list_paths(store, prefix).await, BTreeSet::new());
}

fn assert_not_found(result: Result<impl std::fmt::Debug, Error>, what: &str) {
    match result {
        Err(Error::NotFound { .. }) => {}
        other => panic!("{what}: expected NotFound, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_store_s3_put_list_copy_delete() {
    let Some(store) = store() else { return };
    let prefix = unique_prefix("basic");
    let at = |key: &str| Path::from(format!("{prefix}/{key}"));

    // Put and read back, whole and by range; HEAD gives the size and an ETag.
    let small = bytes(1, 100_003);
    let put = store
        .put(&at("small.bin"), small.clone().into())
        .await
        .unwrap();
    assert!(put.e_tag.is_some(), "PutObject returned no ETag");
    assert_eq!(read_all(&store, &at("small.bin")).await, small);
    let meta = store.head(&at("small.bin")).await.unwrap();
    assert_eq!(meta.size, small.len() as u64);
    assert_eq!(meta.e_tag, put.e_tag, "HEAD's ETag differs from PUT's");
    let range = store
        .get_range(&at("small.bin"), 4096..70_000)
        .await
        .unwrap();
    assert_eq!(&range[..], &small[4096..70_000]);
    let empty = store.put(&at("empty"), PutPayload::new()).await.unwrap();
    assert!(empty.e_tag.is_some());
    assert_eq!(read_all(&store, &at("empty")).await, Vec::<u8>::new());

    // Overwrite: the new bytes, a new ETag.
    let small2 = bytes(2, 5_000);
    let put2 = store
        .put(&at("small.bin"), small2.clone().into())
        .await
        .unwrap();
    assert_ne!(put2.e_tag, put.e_tag, "an overwrite kept the ETag");
    assert_eq!(read_all(&store, &at("small.bin")).await, small2);

    // Listing: by prefix (recursive), and one level with a delimiter.
    for (i, key) in [
        "a/1.parquet",
        "a/2.parquet",
        "a/deep/3.parquet",
        "b/4.parquet",
        "ab.txt",
    ]
    .iter()
    .enumerate()
    {
        store
            .put(&at(key), bytes(10 + i as u64, 1000 + i).into())
            .await
            .unwrap();
    }
    assert_eq!(
        list_paths(&store, &at("a")).await,
        ["a/1.parquet", "a/2.parquet", "a/deep/3.parquet"]
            .map(|k| at(k).to_string())
            .into(),
        "a prefix lists exactly the objects under it (not `ab.txt`)"
    );
    let listed: Vec<_> = store.list(Some(&at("a"))).try_collect().await.unwrap();
    for meta in &listed {
        let i = ["1.parquet", "2.parquet", "deep/3.parquet"]
            .iter()
            .position(|k| meta.location == at(&format!("a/{k}")))
            .unwrap();
        assert_eq!(meta.size, 1000 + i as u64, "size of {}", meta.location);
    }
    let level = store.list_with_delimiter(Some(&prefix)).await.unwrap();
    assert_eq!(
        level
            .common_prefixes
            .iter()
            .map(ToString::to_string)
            .collect::<BTreeSet<_>>(),
        ["a", "b"].map(|k| at(k).to_string()).into()
    );
    assert_eq!(
        level
            .objects
            .iter()
            .map(|m| m.location.to_string())
            .collect::<BTreeSet<_>>(),
        ["ab.txt", "empty", "small.bin"]
            .map(|k| at(k).to_string())
            .into()
    );
    // Listing from an offset (after a key), as resumable scans do.
    let after: BTreeSet<String> = store
        .list_with_offset(Some(&at("a")), &at("a/1.parquet"))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        after,
        ["a/2.parquet", "a/deep/3.parquet"]
            .map(|k| at(k).to_string())
            .into()
    );
    assert_eq!(
        list_paths(&store, &at("nothing-here")).await,
        BTreeSet::new()
    );

    // Copy (server side), onto a new key and over an existing one.
    store
        .copy(&at("small.bin"), &at("copy/of-small.bin"))
        .await
        .unwrap();
    assert_eq!(read_all(&store, &at("copy/of-small.bin")).await, small2);
    store
        .copy(&at("a/1.parquet"), &at("copy/of-small.bin"))
        .await
        .unwrap();
    assert_eq!(
        read_all(&store, &at("copy/of-small.bin")).await,
        bytes(10, 1000)
    );
    assert_eq!(
        read_all(&store, &at("small.bin")).await,
        small2,
        "copy changed its source"
    );

    // Delete: gone from GET, HEAD and listings; deleting again is not an error (as on S3).
    store.delete(&at("copy/of-small.bin")).await.unwrap();
    assert_not_found(
        store.get(&at("copy/of-small.bin")).await,
        "GET after delete",
    );
    assert_not_found(
        store.head(&at("copy/of-small.bin")).await,
        "HEAD after delete",
    );
    assert!(
        !list_paths(&store, &prefix)
            .await
            .contains(&at("copy/of-small.bin").to_string())
    );
    store.delete(&at("copy/of-small.bin")).await.unwrap();
    assert_not_found(
        store.get(&at("never-written")).await,
        "GET of a missing key",
    );

    delete_prefix(&store, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_store_s3_multipart_upload() {
    let Some(store) = store() else { return };
    let prefix = unique_prefix("multipart");
    let at = |key: &str| Path::from(format!("{prefix}/{key}"));

    // Three parts, 5 MiB (S3's smallest part but the last), 5 MiB and a short last one:
    // 12.2 MB in all. Parts upload concurrently.
    let sizes = [5 * MIB, 5 * MIB, 2 * MIB + 12_345];
    let parts: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| bytes(100 + i as u64, n))
        .collect();
    let whole: Vec<u8> = parts.concat();
    assert!(whole.len() > 10_000_000);
    let path = at("big.bin");
    let mut upload = store.put_multipart(&path).await.unwrap();
    let uploads: Vec<_> = parts
        .iter()
        .map(|p| upload.put_part(p.clone().into()))
        .collect();
    futures::future::try_join_all(uploads).await.unwrap();
    let done = upload.complete().await.unwrap();
    // S3's multipart ETag: the MD5 of the parts' MD5s, then "-<number of parts>".
    let e_tag = done
        .e_tag
        .expect("CompleteMultipartUpload returned no ETag");
    assert!(e_tag.trim_matches('"').ends_with("-3"), "ETag {e_tag}");
    let meta = store.head(&path).await.unwrap();
    assert_eq!(meta.size, whole.len() as u64);
    let read = read_all(&store, &path).await;
    assert!(
        read == whole,
        "the object read back differs from the parts uploaded"
    );
    // Ranged reads across the part boundaries.
    for r in [
        5 * MIB - 10..5 * MIB + 10,
        10 * MIB - 1..10 * MIB + 1_000_000,
    ] {
        let got = store
            .get_range(&path, r.start as u64..r.end as u64)
            .await
            .unwrap();
        assert_eq!(&got[..], &whole[r]);
    }

    // The buffered writer that Parquet and CSV writers use: 5 MiB chunks, 11 MB in all.
    let path2 = at("buffered.bin");
    let data2 = bytes(200, 11 * MIB);
    let mut writer = object_store::WriteMultipart::new_with_chunk_size(
        store.put_multipart(&path2).await.unwrap(),
        5 * MIB,
    );
    for chunk in data2.chunks(777_777) {
        writer.write(chunk);
    }
    writer.finish().await.unwrap();
    assert!(
        read_all(&store, &path2).await == data2,
        "WriteMultipart's object differs"
    );

    // A part under 5 MiB that is not the last is refused at completion (EntityTooSmall),
    // as on S3, and nothing is written.
    let path3 = at("too-small-parts.bin");
    let mut upload = store.put_multipart(&path3).await.unwrap();
    upload.put_part(bytes(300, MIB).into()).await.unwrap();
    upload.put_part(bytes(301, MIB).into()).await.unwrap();
    let refused = upload.complete().await;
    assert!(
        refused.is_err(),
        "parts of 1 MiB were accepted: {refused:?}"
    );
    upload.abort().await.ok();
    assert_not_found(store.head(&path3).await, "HEAD after a refused completion");

    // An aborted upload leaves no object.
    let path4 = at("aborted.bin");
    let mut upload = store.put_multipart(&path4).await.unwrap();
    upload.put_part(bytes(400, 5 * MIB).into()).await.unwrap();
    upload.abort().await.unwrap();
    assert_not_found(store.head(&path4).await, "HEAD after abort");
    assert_eq!(
        list_paths(&store, &prefix).await,
        [path.to_string(), path2.to_string()].into()
    );

    delete_prefix(&store, &prefix).await;
}

/// Conditional writes, which a commit protocol on object storage builds on: create only if
/// absent (If-None-Match: *), replace only the version read (If-Match: <ETag>), and copy
/// only if the target is absent (a one-part multipart copy completed with If-None-Match).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_store_s3_conditional_put() {
    let Some((endpoint, bucket)) = s3_env() else {
        return;
    };
    let store = builder(&endpoint, &bucket)
        .with_copy_if_not_exists(S3CopyIfNotExists::Multipart)
        .build()
        .unwrap();
    let prefix = unique_prefix("conditional");
    let at = |key: &str| Path::from(format!("{prefix}/{key}"));
    let create = || PutOptions::from(PutMode::Create);

    // Create only if absent.
    let log0 = at("_log/00000.json");
    let first = store
        .put_opts(&log0, bytes(1, 300).into(), create())
        .await
        .unwrap();
    match store.put_opts(&log0, bytes(2, 300).into(), create()).await {
        Err(Error::AlreadyExists { .. }) => {}
        other => panic!("a second create of {log0}: expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(
        read_all(&store, &log0).await,
        bytes(1, 300),
        "the refused create wrote"
    );

    // Replace only the version read.
    let version = |e_tag: Option<String>| {
        PutOptions::from(PutMode::Update(UpdateVersion {
            e_tag,
            version: None,
        }))
    };
    let second = store
        .put_opts(&log0, bytes(3, 400).into(), version(first.e_tag.clone()))
        .await
        .unwrap();
    assert_ne!(second.e_tag, first.e_tag);
    match store
        .put_opts(&log0, bytes(4, 400).into(), version(first.e_tag.clone()))
        .await
    {
        Err(Error::Precondition { .. }) => {}
        other => panic!("an update with a stale ETag: expected Precondition, got {other:?}"),
    }
    assert_eq!(
        read_all(&store, &log0).await,
        bytes(3, 400),
        "the refused update wrote"
    );
    match store
        .put_opts(
            &at("absent"),
            bytes(5, 10).into(),
            version(first.e_tag.clone()),
        )
        .await
    {
        Err(Error::Precondition { .. }) => {}
        other => panic!("an update of a missing key: expected Precondition, got {other:?}"),
    }
    assert_not_found(
        store.head(&at("absent")).await,
        "HEAD after a refused update",
    );

    // Copy only if the target is absent.
    store
        .copy_if_not_exists(&log0, &at("_log/00001.json"))
        .await
        .unwrap();
    assert_eq!(
        read_all(&store, &at("_log/00001.json")).await,
        bytes(3, 400)
    );
    store.put(&at("other"), bytes(6, 50).into()).await.unwrap();
    match store.copy_if_not_exists(&at("other"), &log0).await {
        Err(Error::AlreadyExists { .. }) => {}
        other => panic!("copy_if_not_exists onto {log0}: expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(
        read_all(&store, &log0).await,
        bytes(3, 400),
        "the refused copy wrote"
    );

    // Not tested here: racing creates. On S3 exactly one of several writers creating the
    // same key at once wins; s3s-fs checks If-None-Match and then writes (a temporary file
    // renamed into place), so racing writers can all be told they won, or one can fail
    // on the other's rename. A commit protocol's concurrency cannot be tested on it.

    delete_prefix(&store, &prefix).await;
}
