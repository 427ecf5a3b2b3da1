//! The exchange between stage 1 and stage 2 over a Kafka topic
//! (`connectors/src/kafka/exchange.rs`, docs/design/cluster.md), against the real broker.

use super::{bootstrap, broker_lock, create_topic, producer, unique};
use datafusion::arrow::array::{ArrayRef, StringArray};
use datafusion::arrow::record_batch::RecordBatch;
use rdkafka::ClientConfig;
use rdkafka::consumer::Consumer;
use rdkafka::producer::FutureRecord;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::sync::Arc;
use std::time::Duration;

/// The exchange over a Kafka topic (docs/design/cluster.md, step 2): two stage-1 senders,
/// a stage-2 receiver owning one of two key partitions. What it reads, put through the
/// aligner, is what the in-memory exchange would give: each sender's rows for that
/// partition, the least watermark, the barrier once both sent it (the first sender's end,
/// sent after its barrier, held until then), and the end once both ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_exchange_carries_data_watermarks_and_barriers_in_order() {
    use weir_connectors::kafka::exchange::{KafkaReceiver, KafkaSender};
    use weir_engine::dataflow::exchange::{Aligner, ExchangeSender, Message, Step};
    let Some(b) = bootstrap() else { return };
    let _g = broker_lock().read().await;
    let topic = unique("exchange");
    create_topic(&b, &topic, 2).await;
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &b);
    let batch = |v: &str| {
        RecordBatch::try_from_iter([(
            "region",
            Arc::new(StringArray::from(vec![v, v])) as ArrayRef,
        )])
        .expect("batch")
    };
    let data = |v: &str| Message::Data {
        partition: 1,
        batch: batch(v),
    };
    // Sender 0 sends everything first, so partition 1 holds its records before sender 1's.
    let mut s0 = KafkaSender::new(&config, &topic, 0, 2).expect("sender 0");
    s0.send(1, data("eu")).await.expect("send");
    s0.send(0, data("not for partition 1")).await.expect("send");
    s0.send_all(Message::Watermark(10)).await.expect("send");
    s0.send_all(Message::Barrier(1)).await.expect("send");
    s0.send_all(Message::End).await.expect("send");
    let mut s1 = KafkaSender::new(&config, &topic, 1, 2).expect("sender 1");
    s1.send(1, data("us")).await.expect("send");
    s1.send_all(Message::Watermark(20)).await.expect("send");
    s1.send_all(Message::Barrier(1)).await.expect("send");
    s1.send_all(Message::End).await.expect("send");
    assert!(s1.send(2, Message::End).await.is_err(), "no partition 2");

    let mut rx = KafkaReceiver::new(&config, &topic, &[1]).expect("receiver");
    let mut aligner = Aligner::new(2);
    let mut steps = Vec::new();
    let read = async {
        while !steps.contains(&Step::End) {
            let envelope = rx.next().await.expect("an exchange record");
            steps.extend(aligner.push(envelope).expect("in order"));
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("the receiver reads both senders' records to their end");
    let rows = |from: usize, v: &str| Step::Data {
        from,
        partition: 1,
        batch: batch(v),
    };
    assert_eq!(
        steps,
        vec![
            rows(0, "eu"),
            rows(1, "us"),
            Step::Watermark(10),
            Step::Checkpoint(1),
            Step::Watermark(20),
            Step::Watermark(i64::MAX),
            Step::End,
        ]
    );
}

/// A transactional exchange sender (what stage 1 will write each step in): a receiver sees
/// only committed records, and a sender fenced by a successor with the same transactional
/// id can neither commit nor make its open transaction's records visible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_exchange_shows_committed_records_only_and_fences_a_zombie() {
    use weir_connectors::kafka::exchange::{KafkaReceiver, KafkaSender};
    use weir_engine::dataflow::exchange::{ExchangeSender, Message};
    let Some(b) = bootstrap() else { return };
    let _g = broker_lock().read().await;
    let topic = unique("exchange-txn");
    create_topic(&b, &topic, 1).await;
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &b);
    let id = format!("{topic}-stage1-0");
    let data = |v: &str| Message::Data {
        partition: 0,
        batch: RecordBatch::try_from_iter([(
            "region",
            Arc::new(StringArray::from(vec![v])) as ArrayRef,
        )])
        .expect("batch"),
    };
    let mut zombie = KafkaSender::transactional(&config, &topic, 0, 1, &id)
        .await
        .expect("transactional sender");
    zombie.begin().await.expect("begin");
    zombie.send(0, data("aborted")).await.expect("send");
    zombie.abort().await.expect("abort");
    zombie.begin().await.expect("begin");
    zombie.send(0, data("committed")).await.expect("send");
    zombie.commit().await.expect("commit");
    // An open transaction when the successor starts: the successor aborts it.
    zombie.begin().await.expect("begin");
    zombie.send(0, data("zombie")).await.expect("send");
    let mut successor = KafkaSender::transactional(&config, &topic, 0, 1, &id)
        .await
        .expect("the successor fences the zombie");
    assert!(
        zombie.commit().await.is_err(),
        "a fenced sender must not commit"
    );
    successor.begin().await.expect("begin");
    successor.send(0, data("successor")).await.expect("send");
    successor.send(0, Message::End).await.expect("send");
    successor.commit().await.expect("commit");

    let mut rx = KafkaReceiver::new(&config, &topic, &[0]).expect("receiver");
    let mut seen = Vec::new();
    let read = async {
        loop {
            let e = rx.next().await.expect("an exchange record");
            match e.message {
                Message::Data { batch, .. } => seen.push(
                    batch
                        .column(0)
                        .as_any()
                        .downcast_ref::<StringArray>()
                        .expect("text")
                        .value(0)
                        .to_string(),
                ),
                Message::End => break,
                other => panic!("unexpected {other:?}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("the receiver reads to the successor's end");
    assert_eq!(seen, vec!["committed", "successor"]);
}

/// Stage 1's exactly-once step over the Kafka exchange: the input positions a consumer
/// group reached are committed in the exchange transaction, so they move with the records
/// sent in it, and an aborted transaction leaves them where they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_exchange_commits_input_positions_with_its_records() {
    use rdkafka::consumer::StreamConsumer;
    use weir_connectors::kafka::exchange::KafkaSender;
    use weir_engine::dataflow::exchange::{ExchangeSender, Message};
    let Some(b) = bootstrap() else { return };
    let _g = broker_lock().read().await;
    let input = unique("exchange-input");
    let exchange = unique("exchange-out");
    create_topic(&b, &input, 1).await;
    create_topic(&b, &exchange, 1).await;
    let p = producer(&b);
    for i in 0..5 {
        let v = format!("{i}");
        p.send(
            FutureRecord::<(), _>::to(&input).partition(0).payload(&v),
            Duration::from_secs(10),
        )
        .await
        .expect("produce input");
    }
    let group = format!("{input}-stage1");
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &b)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&[&input]).expect("subscribe");
    // Read the five input records (joining the group on the way).
    let read = async {
        for _ in 0..5 {
            consumer.recv().await.expect("input record");
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("the consumer reads the input");
    let committed = |c: &StreamConsumer| {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&input, 0);
        let got = c
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("committed offsets");
        got.find_partition(&input, 0).expect("partition").offset()
    };
    let positions = |next: i64| {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&input, 0, Offset::Offset(next))
            .expect("offset");
        tpl
    };
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &b);
    let mut sender = KafkaSender::transactional(&config, &exchange, 0, 1, &format!("{group}-0"))
        .await
        .expect("transactional sender");
    let data = Message::Data {
        partition: 0,
        batch: RecordBatch::try_from_iter([(
            "v",
            Arc::new(StringArray::from(vec!["x"])) as ArrayRef,
        )])
        .expect("batch"),
    };
    // A step over the first three records, committed: the group is at 3.
    sender.begin().await.expect("begin");
    sender.send(0, data.clone()).await.expect("send");
    let meta = consumer.group_metadata().expect("group metadata");
    sender
        .send_offsets(positions(3), meta)
        .await
        .expect("offsets");
    sender.commit().await.expect("commit");
    assert_eq!(committed(&consumer), Offset::Offset(3));
    // The next step, aborted: its positions are not committed either.
    sender.begin().await.expect("begin");
    sender.send(0, data).await.expect("send");
    let meta = consumer.group_metadata().expect("group metadata");
    sender
        .send_offsets(positions(5), meta)
        .await
        .expect("offsets");
    sender.abort().await.expect("abort");
    assert_eq!(committed(&consumer), Offset::Offset(3));
}
