//! The JSON messages of view subscriptions: snapshots and `rows` messages of appended
//! rows, of an updating view's changes, and of a filtered subscription's rows with their
//! seqs. Shared by the subscribers (`ws.rs`) and the filtered subscriptions' router
//! (`rooms.rs`).

use super::json::{rfc3339_ms, rfc3339_us, write_changes, write_rows};
use axum::extract::ws::Utf8Bytes;
use datafusion::arrow::array::UInt32Array;
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::record_batch::RecordBatch;
use weir_engine::serving::{Emitted, KeyedPage, ViewBuffer};

/// The rows of a message: an append-only view's, or an updating view's changes, row i
/// with seq `seqs[i]`.
enum Body<'a> {
    Appended(&'a [RecordBatch]),
    /// Rows of a filtered subscription, row i (over all batches) with seq `seqs[i]`.
    Filtered(&'a [RecordBatch], &'a [u64]),
    Changes(&'a RecordBatch, &'a [u64]),
}

/// What a message says after its rows.
enum Tail {
    /// `snapshot`: the newest seq the view has emitted.
    Snapshot { last_seq: u64 },
    /// `rows`: where the rows are in the view's sequence and when.
    Rows {
        first_seq: u64,
        last_seq: u64,
        watermark: Option<i64>,
        emitted_at_us: Option<i64>,
    },
}

/// A `snapshot` or `rows` message.
fn message(body: Body<'_>, tail: Tail) -> weir_engine::Result<Vec<u8>> {
    let kind = match tail {
        Tail::Snapshot { .. } => "snapshot",
        Tail::Rows { .. } => "rows",
    };
    let mut out = format!("{{\"type\":\"{kind}\",").into_bytes();
    match body {
        Body::Appended(batches) => {
            out.extend_from_slice(b"\"rows\":[");
            write_rows(batches, &mut out, true);
            out.push(b']');
        }
        Body::Filtered(batches, seqs) => {
            out.extend_from_slice(b"\"rows\":[");
            write_rows(batches, &mut out, true);
            out.extend_from_slice(b"],\"seqs\":");
            out.extend(serde_json::to_vec(seqs).unwrap_or_default());
        }
        Body::Changes(batch, seqs) => write_changes(batch, seqs, &mut out)?,
    }
    match tail {
        Tail::Snapshot { last_seq } => {
            out.extend_from_slice(format!(",\"last_seq\":{last_seq}}}").as_bytes());
        }
        Tail::Rows {
            first_seq,
            last_seq,
            watermark,
            emitted_at_us,
        } => {
            let wm = watermark.filter(|w| *w != i64::MAX).and_then(rfc3339_ms);
            let at = emitted_at_us.and_then(rfc3339_us);
            out.extend_from_slice(
                format!(
                    ",\"first_seq\":{first_seq},\"last_seq\":{last_seq},\"watermark\":{},\"emitted_at\":{}}}",
                    serde_json::to_string(&wm).unwrap_or_else(|_| "null".into()),
                    serde_json::to_string(&at).unwrap_or_else(|_| "null".into()),
                )
                .as_bytes(),
            );
        }
    }
    Ok(out)
}

/// The `rows` message of an emitted batch's rows from seq `from` on (an updating view's
/// batch is a batch of changes).
pub(super) fn live_message(e: &Emitted, from: u64, keyed: bool) -> weir_engine::Result<Utf8Bytes> {
    let skip = from.saturating_sub(e.first_seq) as usize;
    let part = e.batch.slice(skip, e.batch.num_rows() - skip);
    let seqs: Vec<u64> = if keyed {
        (from..=e.last_seq()).collect()
    } else {
        vec![]
    };
    let body = if keyed {
        Body::Changes(&part, &seqs)
    } else {
        Body::Appended(std::slice::from_ref(&part))
    };
    emitted_message(e, from, body)
}

/// The `rows` message of rows of emitted batch `e`, covering its seqs from `from` on.
fn emitted_message(e: &Emitted, from: u64, body: Body<'_>) -> weir_engine::Result<Utf8Bytes> {
    let msg = message(
        body,
        Tail::Rows {
            first_seq: from,
            last_seq: e.last_seq(),
            watermark: e.watermark,
            emitted_at_us: Some(e.emitted_at_us),
        },
    )?;
    Ok(text(msg))
}

/// The first message of an updating view's subscriber: `page` as a snapshot when it
/// resets the reader, else as the changes after its seq (`None` when there are none).
fn page_message(page: &KeyedPage, watermark: Option<i64>) -> weir_engine::Result<Option<Vec<u8>>> {
    let body = Body::Changes(&page.rows, &page.seqs);
    let tail = match page.seqs.first() {
        _ if page.reset => Tail::Snapshot {
            last_seq: page.last_seq,
        },
        None => return Ok(None),
        Some(&first_seq) => Tail::Rows {
            first_seq,
            last_seq: page.last_seq,
            watermark,
            emitted_at_us: None,
        },
    };
    message(body, tail).map(Some)
}

pub(super) fn text(bytes: Vec<u8>) -> Utf8Bytes {
    // Our JSON writer only writes UTF-8.
    Utf8Bytes::from(String::from_utf8(bytes).unwrap_or_default())
}

/// The first message of a filtered subscriber and the seq it covers: the rows `select`
/// picks (a filter's matching rows, by index) of the snapshot (no `since`; an updating
/// view's current rows), or of the rows after `since` (none when there are none). Every
/// row comes with its seq.
pub(super) fn filtered_first(
    buffer: &ViewBuffer,
    select: impl Fn(&RecordBatch) -> Vec<u32>,
    since: Option<u64>,
    watermark: Option<i64>,
) -> weir_engine::Result<(Option<Vec<u8>>, u64)> {
    let pick = |b: &RecordBatch, rows: &[u32]| {
        take_record_batch(b, &UInt32Array::from(rows.to_vec()))
            .map_err(weir_engine::WeirError::from)
    };
    if let Some(page) = buffer.keyed_page(since, usize::MAX) {
        let page = page?;
        let rows = select(&page.rows);
        let part = pick(&page.rows, &rows)?;
        let seqs: Vec<u64> = rows.iter().map(|r| page.seqs[*r as usize]).collect();
        let tail = match since {
            Some(s) if !page.reset => {
                if seqs.is_empty() {
                    return Ok((None, page.last_seq));
                }
                Tail::Rows {
                    first_seq: s + 1,
                    last_seq: page.last_seq,
                    watermark,
                    emitted_at_us: None,
                }
            }
            _ => Tail::Snapshot {
                last_seq: page.last_seq,
            },
        };
        return Ok((
            Some(message(Body::Changes(&part, &seqs), tail)?),
            page.last_seq,
        ));
    }
    let retained = buffer.retained();
    let from = since.map_or(0, |s| s.saturating_add(1));
    let (mut parts, mut seqs, mut first) = (Vec::new(), Vec::new(), None);
    for (seq, b) in &retained.batches {
        if seq + b.num_rows() as u64 <= from {
            continue;
        }
        first.get_or_insert(from.max(*seq));
        let rows: Vec<u32> = select(b)
            .into_iter()
            .filter(|r| seq + u64::from(*r) >= from)
            .collect();
        if rows.is_empty() {
            continue;
        }
        seqs.extend(rows.iter().map(|r| seq + u64::from(*r)));
        parts.push(pick(b, &rows)?);
    }
    let last_seq = retained.last_seq;
    let tail = match (since, first) {
        (None, _) => Tail::Snapshot { last_seq },
        (Some(_), Some(first_seq)) if !seqs.is_empty() => Tail::Rows {
            first_seq,
            last_seq,
            watermark,
            emitted_at_us: None,
        },
        _ => return Ok((None, last_seq)),
    };
    Ok((
        Some(message(Body::Filtered(&parts, &seqs), tail)?),
        last_seq,
    ))
}

/// The `rows` message of a filtered subscriber's share of an emitted batch: `rows`
/// (indices into it, ascending), each with its seq; the message covers the view's seqs
/// from `from` to the batch's last.
pub(super) fn filtered_live(
    e: &Emitted,
    rows: &[u32],
    keyed: bool,
    from: u64,
) -> weir_engine::Result<Utf8Bytes> {
    let part = take_record_batch(&e.batch, &UInt32Array::from(rows.to_vec()))?;
    let seqs: Vec<u64> = rows.iter().map(|r| e.first_seq + u64::from(*r)).collect();
    let body = if keyed {
        Body::Changes(&part, &seqs)
    } else {
        Body::Filtered(std::slice::from_ref(&part), &seqs)
    };
    emitted_message(e, from, body)
}

/// What a subscriber sends first, and the seq of the newest row it covers: the snapshot
/// (no `since`), or the rows after `since` (none when there are none). An updating view's
/// first message is a page of its rows by key ([`page_message`]).
pub(super) fn first_message(
    buffer: &ViewBuffer,
    since: Option<u64>,
    watermark: Option<i64>,
) -> weir_engine::Result<(Option<Vec<u8>>, u64)> {
    if let Some(page) = buffer.keyed_page(since, usize::MAX) {
        let page = page?;
        return Ok((page_message(&page, watermark)?, page.last_seq));
    }
    let retained = buffer.retained();
    let last_seq = retained.last_seq;
    let msg = match since {
        None => {
            let batches: Vec<RecordBatch> = retained.batches.into_iter().map(|(_, b)| b).collect();
            Some(message(
                Body::Appended(&batches),
                Tail::Snapshot { last_seq },
            )?)
        }
        Some(since) => match after(&retained.batches, since) {
            (_, None) => None,
            (batches, Some(first_seq)) => Some(message(
                Body::Appended(&batches),
                Tail::Rows {
                    first_seq,
                    last_seq,
                    watermark,
                    emitted_at_us: None,
                },
            )?),
        },
    };
    Ok((msg, last_seq))
}

/// The retained rows with seq > `since`, and the seq of the first of them.
fn after(batches: &[(u64, RecordBatch)], since: u64) -> (Vec<RecordBatch>, Option<u64>) {
    let mut out = Vec::new();
    let mut first = None;
    for (seq, b) in batches {
        let last = seq + b.num_rows() as u64 - 1;
        if last <= since {
            continue;
        }
        let skip = since.saturating_add(1).saturating_sub(*seq) as usize;
        first.get_or_insert(seq + skip as u64);
        out.push(b.slice(skip, b.num_rows() - skip));
    }
    (out, first)
}
