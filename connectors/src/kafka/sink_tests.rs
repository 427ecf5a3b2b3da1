//! Unit tests of the Kafka sink without a broker: spool files, message encoding, keys and
//! options (tests/integration/kafka.rs runs it against a real broker).

#![allow(clippy::unwrap_used)]

use super::*;

fn records() -> Vec<spool::Record> {
    vec![
        (None, Some(br#"{"n":1}"#.to_vec())),
        (
            Some(br#"{"k":"EU"}"#.to_vec()),
            Some(br#"{"n":2}"#.to_vec()),
        ),
        (Some(vec![]), Some(vec![])),
        (None, Some(vec![])),
        (
            Some(vec![0, 255, 0xff, 0xff, 0xff, 0xff]),
            Some(vec![7; 70_000]),
        ),
        // A tombstone.
        (Some(br#"{"k":"US"}"#.to_vec()), None),
    ]
}

fn encode(records: &[spool::Record]) -> Vec<u8> {
    let mut buf = Vec::new();
    spool::write_header(&mut buf).unwrap();
    for (k, v) in records {
        spool::write_record(&mut buf, k.as_deref(), v.as_deref()).unwrap();
    }
    buf
}

fn decode(bytes: &[u8]) -> std::io::Result<Vec<spool::Record>> {
    let mut r = spool::Reader::new(bytes)?;
    let mut out = Vec::new();
    while let Some(rec) = r.next_record()? {
        out.push(rec);
    }
    Ok(out)
}

#[test]
fn spool_round_trip() {
    let recs = records();
    let bytes = encode(&recs);
    assert_eq!(&bytes[..8], spool::MAGIC);
    // No key, a key, an empty key (distinct from none), an empty value (distinct from
    // none, a tombstone), binary data.
    assert_eq!(decode(&bytes).unwrap(), recs);
    assert_eq!(decode(&encode(&[])).unwrap(), vec![]);
}

#[test]
fn spool_layout_is_length_prefixed() {
    let mut buf = Vec::new();
    spool::write_record(&mut buf, Some(b"ab"), Some(b"xyz")).unwrap();
    assert_eq!(buf, [2, 0, 0, 0, b'a', b'b', 3, 0, 0, 0, b'x', b'y', b'z']);
    buf.clear();
    spool::write_record(&mut buf, None, Some(b"v")).unwrap();
    assert_eq!(buf, [255, 255, 255, 255, 1, 0, 0, 0, b'v']);
    buf.clear();
    spool::write_record(&mut buf, Some(b"k"), None).unwrap();
    assert_eq!(buf, [1, 0, 0, 0, b'k', 255, 255, 255, 255]);
}

#[test]
fn spool_truncation_and_bad_magic_are_errors() {
    let recs = records();
    let bytes = encode(&recs[..2]);
    let whole = encode(&recs[..1]).len();
    for cut in 8..bytes.len() {
        let r = decode(&bytes[..cut]);
        if cut == 8 || cut == whole {
            // At a record boundary: the records before the cut.
            assert_eq!(r.unwrap().len(), if cut == 8 { 0 } else { 1 });
        } else {
            let e = r.unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "cut at {cut}");
        }
    }
    assert!(decode(b"WEIRSPL").is_err());
    assert!(decode(b"NOTSPOOL").is_err());
}

#[test]
fn spool_files_are_named_by_epoch() {
    let dir = tempfile::tempdir().unwrap();
    assert!(list_spools(&dir.path().join("missing")).unwrap().is_empty());
    for e in [10, 2, 1] {
        let mut f = File::create(spool_path(dir.path(), e)).unwrap();
        spool::write_header(&mut f).unwrap();
    }
    std::fs::write(dir.path().join(OPEN_SPOOL), b"").unwrap();
    std::fs::write(dir.path().join("epoch-x.spool"), b"").unwrap();
    let epochs: Vec<u64> = list_spools(dir.path())
        .unwrap()
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    assert_eq!(epochs, vec![1, 2, 10]);
    assert_eq!(spool_epoch("epoch-7.spool"), Some(7));
    assert_eq!(spool_epoch("open.spool"), None);
    assert!(is_spool_name("open.spool") && is_spool_name("epoch-7.spool"));
    assert!(!is_spool_name("epoch-x.spool"));
    // A recovery without a checkpoint deletes every spool of the sink, nothing else.
    let mut s = Spool::new(dir.path().to_path_buf());
    assert_eq!(s.recover(&[]).unwrap(), 4);
    let left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(left, vec!["epoch-x.spool"]);
}

#[test]
fn precommit_seals_the_open_spool_and_lists_every_uncommitted_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("s");
    let mut s = Spool::new(d.clone());
    // An epoch that wrote nothing stages nothing.
    assert!(s.precommit(4).unwrap().is_empty());
    assert!(!d.exists());
    s.append(Some(b"k"), Some(b"v1")).unwrap();
    s.append(None, Some(b"v2")).unwrap();
    let listed = s.precommit(5).unwrap();
    assert_eq!(
        listed,
        vec![Staged {
            path: spool_path(&d, 5),
            publish_to: None
        }]
    );
    assert!(!d.join(OPEN_SPOOL).exists());
    assert_eq!(
        decode(&std::fs::read(spool_path(&d, 5)).unwrap()).unwrap(),
        vec![
            (Some(b"k".to_vec()), Some(b"v1".to_vec())),
            (None, Some(b"v2".to_vec()))
        ]
    );
    // Epoch 5's checkpoint failed: epoch 6 lists both.
    s.append(None, Some(b"v3")).unwrap();
    let listed = s.precommit(6).unwrap();
    assert_eq!(listed.len(), 2);
    // Committing deletes them.
    s.files.commit(6).unwrap();
    assert!(list_spools(&d).unwrap().is_empty());
    // A message after the last pre-commit is discarded at close, its file at recovery.
    s.append(Some(b"k"), None).unwrap();
    s.discard_open();
    assert_eq!(s.recover(&[]).unwrap(), 1);
    assert!(!d.join(OPEN_SPOOL).exists());
}

#[test]
fn checkpoints_list_their_spools_and_older_ones_are_read_too() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for e in [1, 2, 3] {
        std::fs::write(spool_path(d, e), spool::MAGIC).unwrap();
    }
    let listed = vec![Staged {
        path: spool_path(d, 2),
        publish_to: None,
    }];
    let state = serde_json::json!({"epoch": 2, "files": Staged::list_to_json(&listed)});
    assert_eq!(listed_spools(&state, d, 2).unwrap(), listed);
    // A checkpoint from before `files`: the spools of its epoch and earlier.
    let legacy = serde_json::json!({"epoch": 2, "spool": spool_path(d, 2)});
    let paths: Vec<PathBuf> = listed_spools(&legacy, d, 2)
        .unwrap()
        .into_iter()
        .map(|s| s.path)
        .collect();
    assert_eq!(paths, vec![spool_path(d, 1), spool_path(d, 2)]);
}

fn changes_spec(key: &[&str]) -> SinkSpec {
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    SinkSpec {
        name: "out".into(),
        view: "per_site".into(),
        schema: Arc::new(Schema::new(vec![
            Field::new("site", DataType::Utf8, false),
            Field::new("zone", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
        ])),
        key_columns: key.iter().map(|k| k.to_string()).collect(),
        never_null: vec![],
        changelog: true,
        options: Default::default(),
        data_dir: std::env::temp_dir(),
        stats: Default::default(),
        checkpointed: false,
    }
}

#[test]
fn an_updating_view_is_keyed_by_its_key() {
    let keys = |k: &[&str]| k.iter().map(|c| c.to_string()).collect::<Vec<_>>();
    let spec = changes_spec(&["site", "zone"]);
    assert_eq!(
        upsert_key("sink 'out'", &spec, None).unwrap(),
        keys(&["site", "zone"])
    );
    assert_eq!(
        upsert_key("sink 'out'", &spec, Some(keys(&["zone", "site"]))).unwrap(),
        keys(&["zone", "site"])
    );
    let e = upsert_key("sink 'out'", &spec, Some(keys(&["site"]))).unwrap_err();
    assert!(e.is_user());
    assert_eq!(
        e.to_string(),
        "sink 'out': option 'key' = 'site' does not match updating view 'per_site': its \
         messages are keyed by the view's key (site, zone), so that a compacted topic keeps \
         each row's last value; leave 'key' out or name exactly those columns"
    );
    let global = changes_spec(&[]);
    assert_eq!(upsert_key("sink 'out'", &global, None).unwrap(), keys(&[]));
    assert_eq!(
        upsert_key("sink 'out'", &global, Some(keys(&["n"])))
            .unwrap_err()
            .to_string(),
        "sink 'out': option 'key' = 'n' does not match updating view 'per_site': it is a \
         global aggregate (no key columns), whose messages all carry the same key; leave \
         'key' out"
    );
}

/// A JSON [`Work`] for `spec`'s changes, keyed by `key` (column indices).
fn changes_work(spec: &SinkSpec, key: Vec<usize>) -> Work {
    let key_schema = Arc::new(spec.schema.project(&key).unwrap());
    Work {
        encoder: Box::new(crate::format::record_json::JsonRecordEncoder::new(
            spec.schema.clone(),
        )),
        key_encoder: Some(Box::new(
            crate::format::record_json::JsonRecordEncoder::new(key_schema),
        )),
        key_columns: key,
        changelog: true,
        out: Messages::default(),
        spool: None,
    }
}

fn texts(out: &Messages) -> Vec<(String, Option<String>)> {
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
    (0..out.len())
        .map(|i| {
            let (k, v) = out.get(i);
            (text(k.unwrap()), v.map(text))
        })
        .collect()
}

#[test]
fn changes_are_upserts_and_tombstones() {
    use datafusion::arrow::array::{Int8Array, Int64Array, StringArray};
    use weir_engine::changelog::{DELETE, INSERT, with_op};
    let spec = changes_spec(&["site", "zone"]);
    let rows: [(&str, i64, i8); 6] = [
        ("oslo", 1, INSERT),
        ("rome", 4, DELETE),
        ("oslo", 1, DELETE),
        ("oslo", 2, INSERT),
        ("riga", 1, INSERT),
        ("riga", 1, DELETE),
    ];
    let batch = RecordBatch::try_new(
        with_op(&spec.schema),
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(StringArray::from(vec!["z"; 6])),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
            Arc::new(Int8Array::from_iter_values(rows.iter().map(|r| r.2))),
        ],
    )
    .unwrap();
    let mut w = changes_work(&spec, vec![0, 1]);
    w.encode(&batch).unwrap();
    // The deletes first (rome, riga: tombstones), then oslo's update as one message.
    let k = |s: &str| format!(r#"{{"site":"{s}","zone":"z"}}"#);
    assert_eq!(
        texts(&w.out),
        vec![
            (k("rome"), None),
            (k("riga"), None),
            (
                k("oslo"),
                Some(r#"{"site":"oslo","zone":"z","n":2}"#.into())
            ),
        ]
    );
    // A global aggregate: the last change, keyed by the empty object.
    let mut w = changes_work(&spec, vec![]);
    w.encode(&batch).unwrap();
    assert_eq!(texts(&w.out), vec![("{}".to_string(), None)]);
    w.encode(&batch.slice(0, 4)).unwrap();
    assert_eq!(
        texts(&w.out),
        vec![(
            "{}".into(),
            Some(r#"{"site":"oslo","zone":"z","n":2}"#.into())
        )]
    );
}

#[test]
fn transactional_id_defaults_to_the_sink_name() {
    assert_eq!(transactional_id(None, "alerts").unwrap(), "weir-alerts");
    assert_eq!(
        transactional_id(Some(" prod-alerts ".into()), "alerts").unwrap(),
        "prod-alerts"
    );
    assert!(transactional_id(Some(" ".into()), "alerts").is_err());
}
