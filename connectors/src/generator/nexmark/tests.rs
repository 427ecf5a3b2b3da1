//! Tests of the Nexmark generator: ids, event times, references and value ranges, tables
//! that join, the same rows on several threads as on one and after a restore, options,
//! and the JSON lines written for other engines.

#![allow(clippy::unwrap_used)]
use super::super::GeneratorSourceFactory;
use super::*;
use datafusion::arrow::array::AsArray;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{Int64Type, TimestampMillisecondType};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use weir_engine::connector::SourceEvent;

const START_MS: i64 = 1_704_067_200_000;

fn schema(table: Table) -> SchemaRef {
    table_schema(table, &[])
}

fn source(schema: SchemaRef, options: &[(&str, &str)]) -> Result<Box<dyn Source>> {
    source_on(schema, options, 1)
}

fn source_on(
    schema: SchemaRef,
    options: &[(&str, &str)],
    workers: usize,
) -> Result<Box<dyn Source>> {
    let limits = BatchLimits {
        max_rows: 1000,
        max_delay: Duration::from_millis(20),
    };
    let options = options.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    generator_source(schema, options, limits, workers)
}

/// With several workers an unthrottled generator fills several cycles at once on as
/// many threads: the same batches, partitions and positions as on one, after a restore
/// too.
#[tokio::test]
async fn generated_on_several_threads_as_on_one() {
    for parts in ["1", "3"] {
        let opts = [
            ("nexmark.table", "bid"),
            ("nexmark.events", "45500"),
            ("partitions", parts),
        ];
        let schema = schema(Table::Bid);
        let one = run(&mut source_on(schema.clone(), &opts, 1).unwrap()).await;
        let mut three = source_on(schema.clone(), &opts, 3).unwrap();
        let all = run(&mut three).await;
        assert!(one.len() > 10, "{} batches", one.len());
        assert_eq!(all.len(), one.len(), "partitions {parts}");
        for (a, b) in one.iter().zip(&all) {
            assert_eq!((a.0, &a.1, a.2), (b.0, &b.1, b.2), "partitions {parts}");
        }
        // Restored half way: the rest, as one thread gives it.
        let mid = &one[one.len() / 2];
        let mut resumed = source_on(schema, &opts, 3).unwrap();
        let positions: Vec<(usize, i64)> = (0..parts.parse::<usize>().unwrap())
            .map(|p| (p, mid.2))
            .collect();
        resumed.seek(&positions).unwrap();
        let rest = run(&mut resumed).await;
        let want: Vec<_> = one.iter().filter(|(_, _, pos)| *pos > mid.2).collect();
        assert_eq!(rest.len(), want.len(), "partitions {parts}");
        for (a, b) in want.iter().zip(&rest) {
            assert_eq!((a.0, &a.1, a.2), (b.0, &b.1, b.2), "partitions {parts}");
        }
    }
}

/// Every batch: partition, rows, position after it.
async fn run(source: &mut Box<dyn Source>) -> Vec<(usize, RecordBatch, i64)> {
    let mut out = Vec::new();
    loop {
        match source.next().await.unwrap() {
            SourceEvent::Batch {
                partition,
                batch,
                position,
                ..
            } => out.push((partition, batch, position.unwrap())),
            SourceEvent::End => return out,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// All rows of one table, in row order (one partition).
async fn table(table: Table, options: &[(&str, &str)]) -> RecordBatch {
    let mut opts = vec![("nexmark.table", table.name())];
    opts.extend_from_slice(options);
    let schema = schema(table);
    let batches = run(&mut source(schema.clone(), &opts).unwrap()).await;
    assert!(batches.iter().all(|(p, ..)| *p == 0));
    let batches: Vec<RecordBatch> = batches.into_iter().map(|(_, b, _)| b).collect();
    concat_batches(&schema, &batches).unwrap()
}

fn ints(b: &RecordBatch, name: &str) -> Vec<i64> {
    let c = b.column_by_name(name).unwrap();
    match c.data_type() {
        DataType::Int64 => c.as_primitive::<Int64Type>().values().to_vec(),
        _ => c
            .as_primitive::<TimestampMillisecondType>()
            .values()
            .to_vec(),
    }
}

fn texts(b: &RecordBatch, name: &str) -> Vec<String> {
    let c = b.column_by_name(name).unwrap().as_string::<i32>();
    c.iter().map(|s| s.unwrap().to_string()).collect()
}

/// Event ids from event times at 1000 events/s (one event per millisecond).
fn event_ids(b: &RecordBatch) -> Vec<u64> {
    ints(b, "date_time")
        .iter()
        .map(|t| (t - START_MS) as u64)
        .collect()
}

const EVENTS_5000: &[(&str, &str)] = &[("nexmark.events", "5000"), ("nexmark.event.rate", "1000")];

#[tokio::test]
async fn fifty_events_hold_one_person_three_auctions_and_46_bids() {
    let mut owner: HashMap<u64, Table> = HashMap::new();
    for t in Table::ALL {
        let rows = table(t, EVENTS_5000).await;
        let ids = event_ids(&rows);
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{t:?} in event order");
        for id in ids {
            assert!(owner.insert(id, t).is_none(), "event {id} twice");
        }
    }
    assert_eq!(owner.len(), 5000);
    for block in 0..100u64 {
        let kinds: Vec<Table> = (block * 50..block * 50 + 50).map(|id| owner[&id]).collect();
        assert_eq!(kinds[0], Table::Person);
        assert!(kinds[1..4].iter().all(|k| *k == Table::Auction));
        assert!(kinds[4..].iter().all(|k| *k == Table::Bid));
    }
}

#[tokio::test]
async fn person_and_auction_ids_follow_the_event_ids() {
    let people = table(Table::Person, EVENTS_5000).await;
    assert_eq!(ints(&people, "id"), (1000..1100).collect::<Vec<i64>>());
    let auctions = table(Table::Auction, EVENTS_5000).await;
    let expected: Vec<i64> = event_ids(&auctions)
        .iter()
        .map(|&k| 1000 + (k / 50 * 3 + (k % 50 - 1)) as i64)
        .collect();
    assert_eq!(ints(&auctions, "id"), expected);
    assert_eq!(ints(&auctions, "id"), (1000..1300).collect::<Vec<i64>>());
}

/// `(n / g) * g + (n * 953) % g`, written out again for the tests.
fn adjusted(n: u64, g: u64) -> u64 {
    (n / g) * g + (n * 953) % g
}

#[tokio::test]
async fn event_times_follow_the_rate_partitions_and_groups() {
    let events = 3000u64;
    for (rate, group, parts) in [
        (7_000u64, 1u64, 1usize),
        (3, 1, 3),
        (1000, 50, 2),
        (10_000, 7, 4),
    ] {
        // Expected: the bid rows in emission order, dealt round-robin.
        let expected: Vec<u64> = (0..events)
            .map(|n| adjusted(n, group))
            .filter(|id| id % 50 >= 4)
            .collect();
        let opts = [
            ("nexmark.table", "bid"),
            ("nexmark.events", &events.to_string()),
            ("nexmark.event.rate", &rate.to_string()),
            ("nexmark.out.of.order.group", &group.to_string()),
            ("partitions", &parts.to_string()),
        ];
        let batches = run(&mut source(schema(Table::Bid), &opts).unwrap()).await;
        let mut per_part: Vec<Vec<i64>> = vec![Vec::new(); parts];
        for (p, b, _) in &batches {
            per_part[*p].extend(ints(b, "date_time"));
        }
        for (p, times) in per_part.iter().enumerate() {
            let want: Vec<i64> = expected
                .iter()
                .skip(p)
                .step_by(parts)
                .map(|&id| START_MS + (id * 1000 / rate) as i64)
                .collect();
            assert_eq!(times, &want, "rate {rate} group {group} partition {p}");
        }
    }
    // With groups, the ids of each group come out permuted and complete.
    let grouped = |t: Table, group: &'static str| async move {
        let mut opts = EVENTS_5000.to_vec();
        opts.push(("nexmark.out.of.order.group", group));
        table(t, &opts).await
    };
    let bids = grouped(Table::Bid, "50").await;
    let ids = event_ids(&bids);
    assert!(ids.windows(2).any(|w| w[0] > w[1]), "out of order");
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (0..5000).filter(|k| k % 50 >= 4).collect::<Vec<u64>>()
    );
    let auctions = grouped(Table::Auction, "64").await;
    for (k, id) in event_ids(&auctions).iter().zip(ints(&auctions, "id")) {
        assert_eq!(id, 1000 + (k / 50 * 3 + (k % 50 - 1)) as i64);
    }
}

#[tokio::test]
async fn references_point_at_existing_ids_within_the_lead() {
    let opts = [("nexmark.events", "100000"), ("nexmark.event.rate", "1000")];
    let people = table(Table::Person, &opts).await;
    let auctions = table(Table::Auction, &opts).await;
    let bids = table(Table::Bid, &opts).await;
    // The newest person and auction id created before each event id.
    let last_person = |k: u64| 1000 + (k / 50) as i64;
    let last_auction = |k: u64| 999 + (k / 50 * 3 + (k % 50).clamp(1, 4) - 1) as i64;
    let person_ids: HashSet<i64> = ints(&people, "id").into_iter().collect();
    let auction_ids: HashMap<i64, u64> = ints(&auctions, "id")
        .into_iter()
        .zip(event_ids(&auctions))
        .collect();
    for (k, seller) in event_ids(&auctions)
        .into_iter()
        .zip(ints(&auctions, "seller"))
    {
        assert!(
            (1000..=last_person(k) + 10).contains(&seller),
            "event {k}: seller {seller}"
        );
    }
    let (mut joined, mut hot_auctions, mut hot_bidders) = (0usize, 0usize, 0usize);
    let bid_events = event_ids(&bids);
    for ((k, auction), bidder) in bid_events
        .iter()
        .zip(ints(&bids, "auction"))
        .zip(ints(&bids, "bidder"))
    {
        let last = last_auction(*k);
        assert!(
            (1000.max(last - 100)..=last + 10).contains(&auction)
                || auction == (last - 1000) / 100 * 100 + 1000,
            "event {k}: auction {auction}, last {last}"
        );
        assert!(
            (1000..=last_person(*k) + 10).contains(&bidder),
            "event {k}: bidder {bidder}"
        );
        // The auction, when it exists by now, was created before the bid.
        if let Some(created) = auction_ids.get(&auction)
            && *created < *k
        {
            joined += 1;
        } else {
            assert!(auction > last, "event {k}: auction {auction} missing");
        }
        assert!(person_ids.contains(&bidder) || bidder > last_person(*k));
        hot_auctions += usize::from(auction % 100 == 0);
        hot_bidders += usize::from(bidder % 100 == 1);
    }
    // Half the bids go to a hot auction, three quarters come from a hot bidder, and
    // only the non-hot picks that ran into the lead do not join.
    let n = bid_events.len() as f64;
    assert_eq!(n, 92_000.0);
    assert!(
        (0.49..0.53).contains(&(hot_auctions as f64 / n)),
        "{hot_auctions}"
    );
    assert!(
        (0.74..0.77).contains(&(hot_bidders as f64 / n)),
        "{hot_bidders}"
    );
    assert!((0.93..0.98).contains(&(joined as f64 / n)), "{joined}");
}

#[tokio::test]
async fn field_values_stay_in_their_ranges() {
    let opts = [("nexmark.events", "50000")];
    let auctions = table(Table::Auction, &opts).await;
    let categories: HashSet<i64> = ints(&auctions, "category").into_iter().collect();
    assert_eq!(categories, (10..15).collect());
    let initial = ints(&auctions, "initial_bid");
    let reserve = ints(&auctions, "reserve");
    for (i, r) in initial.iter().zip(&reserve) {
        assert!((100..=100_000_000).contains(i));
        assert!(r - i >= 100 && r - i <= 100_000_000);
    }
    for (t, e) in ints(&auctions, "date_time")
        .iter()
        .zip(ints(&auctions, "expires"))
    {
        // Open about as long as 1666 events take at 10,000/s: 166 ms, at most twice.
        assert!(e > *t && e <= t + 1 + 2 * 167, "{t} {e}");
    }
    let auction_extra: Vec<usize> = texts(&auctions, "extra").iter().map(String::len).collect();
    let mean = auction_extra.iter().sum::<usize>() as f64 / auction_extra.len() as f64;
    assert!((380.0..420.0).contains(&mean), "{mean}");

    let people = table(Table::Person, &opts).await;
    let states: HashSet<String> = texts(&people, "state").into_iter().collect();
    assert_eq!(
        states,
        ["AZ", "CA", "ID", "OR", "WA", "WY"]
            .map(String::from)
            .into()
    );
    assert!(
        texts(&people, "city")
            .iter()
            .all(|c| text::CITIES.contains(&c.as_str()))
    );
    for (name, email) in texts(&people, "name")
        .iter()
        .zip(texts(&people, "email_address"))
    {
        let (first, last) = name.split_once(' ').unwrap();
        assert!(text::FIRST_NAMES.contains(&first) && text::LAST_NAMES.contains(&last));
        assert!(email.ends_with(".com") && email.contains('@'), "{email}");
    }
    // Each person pads to 200 bytes on average.
    for (i, extra) in texts(&people, "extra").iter().enumerate() {
        let size = 8 + [
            &people.column(1),
            &people.column(2),
            &people.column(3),
            &people.column(4),
            &people.column(5),
        ]
        .iter()
        .map(|c| c.as_string::<i32>().value(i).len())
        .sum::<usize>();
        let d = 200 - size;
        let delta = (d as f64 * 0.2).round() as usize;
        assert!(
            (d - delta..d + delta).contains(&extra.len()),
            "{size} {}",
            extra.len()
        );
    }

    let bids = table(Table::Bid, &opts).await;
    assert!(
        ints(&bids, "price")
            .iter()
            .all(|p| (100..=100_000_000).contains(p))
    );
    assert!(
        texts(&bids, "extra")
            .iter()
            .all(|e| (54..82).contains(&e.len()))
    );
    let channels: HashSet<String> = texts(&bids, "channel").into_iter().collect();
    for hot in text::HOT_CHANNELS {
        assert!(channels.contains(hot));
    }
    assert!(channels.len() > 1000);
}

#[tokio::test]
async fn same_options_same_rows_and_undeclared_extra_changes_nothing() {
    let opts = [("nexmark.events", "20000"), ("seed", "5")];
    for t in Table::ALL {
        let a = table(t, &opts).await;
        assert_eq!(a, table(t, &opts).await, "{t:?}");
        let other = table(t, &[("nexmark.events", "20000"), ("seed", "6")]).await;
        assert_eq!(ints(&a, "date_time"), ints(&other, "date_time"));
        assert_ne!(a, other);
        // Without `extra`, in another order: the same values.
        let fields: Vec<Field> = table_columns(t)
            .iter()
            .rev()
            .filter(|c| c.name != "extra")
            .map(|c| Field::new(c.name, c.data_type.clone(), true))
            .collect();
        let narrow = Arc::new(Schema::new(fields));
        let mut o = vec![("nexmark.table", t.name())];
        o.extend_from_slice(&opts);
        let batches: Vec<RecordBatch> = run(&mut source(narrow.clone(), &o).unwrap())
            .await
            .into_iter()
            .map(|(_, b, _)| b)
            .collect();
        let b = concat_batches(&narrow, &batches).unwrap();
        for f in narrow.fields() {
            assert_eq!(
                b.column_by_name(f.name()),
                a.column_by_name(f.name()),
                "{t:?} {}",
                f.name()
            );
        }
    }
}

#[tokio::test]
async fn tables_with_the_same_options_join() {
    // Sources declared apart describe one sequence: at 10,000 events/s several events
    // share a millisecond, yet every bid's auction was created by the bid's time or is
    // one of the 10 ids the spec lets bids run ahead.
    let opts = [
        ("nexmark.events", "60000"),
        ("seed", "9"),
        ("partitions", "1"),
    ];
    let auctions = table(Table::Auction, &opts).await;
    let people = table(Table::Person, &opts).await;
    let bids = table(Table::Bid, &opts).await;
    let created: HashMap<i64, i64> = ints(&auctions, "id")
        .into_iter()
        .zip(ints(&auctions, "date_time"))
        .collect();
    let max_auction = *ints(&auctions, "id").iter().max().unwrap();
    let mut by_time: Vec<(i64, i64)> = created.iter().map(|(a, t)| (*t, *a)).collect();
    by_time.sort_unstable();
    let (mut joined, mut created_before) = (0usize, 0usize);
    for (a, t) in ints(&bids, "auction").iter().zip(ints(&bids, "date_time")) {
        // The newest auction created by the bid's time; bids may run 10 ids ahead.
        let upto = by_time.partition_point(|(c, _)| *c <= t);
        let newest = upto.checked_sub(1).map_or(999, |i| by_time[i].1);
        assert!(*a <= newest + 10, "auction {a} at {t}, newest {newest}");
        match created.get(a) {
            Some(c) => {
                joined += 1;
                created_before += usize::from(*c <= t);
            }
            None => assert!(*a > max_auction, "auction {a} never created"),
        }
    }
    let share = created_before as f64 / bids.num_rows() as f64;
    assert!((0.93..0.99).contains(&share), "{share}");
    // Bids whose auction is beyond the last one created (the lead at the very end).
    let beyond = ints(&bids, "auction")
        .iter()
        .filter(|a| **a > max_auction)
        .count();
    assert_eq!(joined + beyond, bids.num_rows());
    assert_eq!(bids.num_rows(), 55_200);
    assert_eq!(auctions.num_rows(), 3_600);
    assert_eq!(people.num_rows(), 1_200);
    let person_ids: HashSet<i64> = ints(&people, "id").into_iter().collect();
    let sellers_known = ints(&auctions, "seller")
        .iter()
        .filter(|s| person_ids.contains(s))
        .count();
    assert!(sellers_known >= auctions.num_rows() - 10, "{sellers_known}");
}

#[tokio::test]
async fn restored_positions_continue_where_they_were() {
    let opts = [
        ("nexmark.table", "bid"),
        ("nexmark.events", "30000"),
        ("partitions", "3"),
        ("nexmark.out.of.order.group", "10"),
    ];
    let all = run(&mut source(schema(Table::Bid), &opts).unwrap()).await;
    assert_eq!(
        all.iter().map(|(_, b, _)| b.num_rows()).sum::<usize>(),
        27_600
    );
    // Resume partition 0 after its 4th batch, 1 after its 2nd, 2 from its 7th.
    let cut = [4usize, 2, 7];
    let mut positions = Vec::new();
    let mut expected: Vec<Vec<RecordBatch>> = vec![Vec::new(); 3];
    for p in 0..3 {
        let mine: Vec<&(usize, RecordBatch, i64)> = all.iter().filter(|(q, ..)| *q == p).collect();
        positions.push((p, mine[cut[p] - 1].2));
        expected[p] = mine[cut[p]..].iter().map(|(_, b, _)| b.clone()).collect();
    }
    let mut resumed = source(schema(Table::Bid), &opts).unwrap();
    resumed.seek(&positions).unwrap();
    let rest = run(&mut resumed).await;
    for (p, want) in expected.iter().enumerate() {
        let got: Vec<RecordBatch> = rest
            .iter()
            .filter(|(q, ..)| *q == p)
            .map(|(_, b, _)| b.clone())
            .collect();
        let s = schema(Table::Bid);
        assert_eq!(
            concat_batches(&s, &got).unwrap(),
            concat_batches(&s, want).unwrap(),
            "partition {p}"
        );
    }
}

#[test]
fn option_errors_name_the_problem() {
    let err = |opts: &[(&str, &str)]| source(schema(Table::Bid), opts).err().unwrap().to_string();
    assert_eq!(
        err(&[]),
        "the nexmark generator needs option 'nexmark.table' (person | auction | bid): each \
         source is one table of the Nexmark stream"
    );
    assert_eq!(
        err(&[("nexmark.table", "bids")]),
        "option 'nexmark.table' must be one of person | auction | bid, got 'bids'"
    );
    assert!(
        err(&[("nexmark.table", "bid"), ("rows", "10")])
            .starts_with("option 'rows' does not apply to kind 'nexmark': use 'nexmark.events'")
    );
    assert!(
        err(&[("nexmark.table", "bid"), ("max.out.of.orderness", "1s")])
            .starts_with("option 'max.out.of.orderness' does not apply")
    );
    assert_eq!(
        err(&[("nexmark.table", "bid"), ("nexmark.rate", "5")]),
        "unknown option 'nexmark.rate' for the generator source; valid options: kind, \
         nexmark.event.rate, nexmark.events, nexmark.out.of.order.group, nexmark.table, \
         partitions, rows.per.second, seed, start"
    );
    assert!(err(&[("nexmark.table", "bid"), ("nexmark.event.rate", "0")]).contains("at least 1"));
    assert!(
        err(&[
            ("nexmark.table", "bid"),
            ("nexmark.out.of.order.group", "1906")
        ])
        .contains("multiple of 953")
    );
    assert_eq!(
        err(&[("nexmark.table", "bid"), ("nexmark.events", "many")]),
        "option 'nexmark.events' has an invalid value 'many'"
    );
    // Columns of another table.
    let e = source(schema(Table::Person), &[("nexmark.table", "bid")])
        .err()
        .unwrap();
    assert_eq!(
        e.to_string(),
        "the 'nexmark' generator's bid table cannot produce columns 'id', 'name', \
         'email_address', 'credit_card', 'city', 'state'; it produces: auction, bidder, \
         price, channel, url, date_time, extra"
    );
    // Other kinds do not take nexmark options.
    let e = GeneratorSourceFactory
        .create(SourceSpec {
            metadata: vec![],
            name: "t".into(),
            schema: Arc::new(Schema::new(vec![Field::new(
                "symbol",
                DataType::Utf8,
                true,
            )])),
            event_time: None,
            options: Options::new([
                ("kind".to_string(), "ticks".to_string()),
                ("nexmark.table".to_string(), "bid".to_string()),
            ]),
            data_dir: std::env::temp_dir(),
            batch: BatchLimits::default(),
            stats: Default::default(),
            workers: 1,
            idle_timeout: weir_engine::connector::DEFAULT_IDLE_TIMEOUT,
        })
        .err()
        .unwrap();
    assert!(
        e.to_string().starts_with("unknown option 'nexmark.table'"),
        "{e}"
    );
}

#[tokio::test]
async fn defaults_start_in_2024_at_ten_thousand_events_per_second() {
    let mut s = source(schema(Table::Person), &[("nexmark.table", "person")]).unwrap();
    assert!(!s.bounded());
    let SourceEvent::Batch { batch, .. } = s.next().await.unwrap() else {
        panic!("a batch");
    };
    assert_eq!(batch.num_rows(), 1000);
    // Person j is event 50 j: 5 ms apart at 10,000 events/s.
    let times = ints(&batch, "date_time");
    assert_eq!(times[0], DEFAULT_START_MS);
    assert_eq!(times[999], DEFAULT_START_MS + 999 * 5);
    let bounded = source(
        schema(Table::Person),
        &[("nexmark.table", "person"), ("nexmark.events", "1")],
    )
    .unwrap();
    assert!(bounded.bounded());
}

#[tokio::test]
async fn json_lines_carry_epoch_millis() {
    let bids = table(Table::Bid, &[("nexmark.events", "50")]).await;
    let mut out = Vec::new();
    write_json_lines(&bids, &mut out).unwrap();
    let lines: Vec<serde_json::Value> = out
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 46);
    let first = &lines[0];
    assert_eq!(first["date_time"], serde_json::json!(DEFAULT_START_MS));
    assert_eq!(
        first["auction"],
        serde_json::json!(ints(&bids, "auction")[0])
    );
    assert_eq!(first["url"], serde_json::json!(texts(&bids, "url")[0]));
    assert_eq!(
        first
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<HashSet<_>>(),
        [
            "auction",
            "bidder",
            "price",
            "channel",
            "url",
            "date_time",
            "extra"
        ]
        .map(String::from)
        .into()
    );
}
