//! The Nexmark queries (benches/nexmark/qN.sql) stay correct: each runs on the Nexmark
//! generator's first 50,000 events, and its result rows must equal, exactly, what
//! benches/nexmark/batch/qN.sql computes with plain DataFusion over the same rows (the
//! logic of `weir-bench nexmark --check`). At 1,000 events per second of event time the
//! run spans 50 seconds: several windows of each windowed query.

use weir_benches::nexmark::{Query, check};

const EVENTS: u64 = 50_000;
const EVENT_RATE: u64 = 1_000;

/// Check one query; the streamed rows must equal the batch answer and must not be empty
/// (an empty answer on both sides would prove nothing).
async fn check_query(name: &str) {
    let q = Query::get(name).expect("query");
    let r = check(&q, EVENTS, EVENT_RATE).await.expect("check ran");
    assert!(
        r.ok(),
        "{name}: {} rows streamed, {} expected; differences:\n{}",
        r.streaming_rows,
        r.batch_rows,
        r.differences.join("\n")
    );
    assert!(r.streaming_rows > 0, "{name}: no result rows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nexmark_q0_matches_batch() {
    check_query("q0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nexmark_q1_matches_batch() {
    check_query("q1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nexmark_q2_matches_batch() {
    check_query("q2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nexmark_q3_matches_batch() {
    check_query("q3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nexmark_q4_matches_batch() {
    check_query("q4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nexmark_q5_matches_batch() {
    check_query("q5").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nexmark_q7_matches_batch() {
    check_query("q7").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nexmark_q8_matches_batch() {
    check_query("q8").await;
}

/// The check itself can fail: q5 against a batch answer that keeps the runner-up auctions
/// too (count >= max - 1) must report the extra expected rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nexmark_check_reports_differences() {
    let mut q = Query::get("q5").expect("query");
    q.batch_sql = q
        .batch_sql
        .replace("c.num = m.max_num", "c.num >= m.max_num - 1");
    let r = check(&q, EVENTS, EVENT_RATE).await.expect("check ran");
    assert!(!r.ok());
    assert!(r.batch_rows > r.streaming_rows, "{r:?}");
    assert!(
        r.differences.iter().any(|d| d.starts_with("- auction=")),
        "{:?}",
        r.differences
    );
}
