//! Stage 1 of a cluster member: a source's input partitions, folded into the views'
//! exchange topics in one transaction per step with the input positions.

use super::*;

/// Rebalance events, taken by the thread that polls.
#[derive(Default)]
pub(super) struct Events {
    pub(super) list: Mutex<Vec<(bool, Vec<i32>)>>,
    /// Set while `list` holds any: the polling loop looks at the flag for each message,
    /// not at the lock.
    pub(super) any: AtomicBool,
}

impl Events {
    fn push(&self, assigned: bool, ids: Vec<i32>) {
        self.list.lock().push((assigned, ids));
        self.any.store(true, Ordering::Release);
    }

    fn take(&self) -> Vec<(bool, Vec<i32>)> {
        if !self.any.swap(false, Ordering::Acquire) {
            return Vec::new();
        }
        std::mem::take(&mut *self.list.lock())
    }
}

/// Messages the stage-1 loop takes between two looks at the clock.
pub(super) const CLOCK_EVERY: u32 = 256;

pub(super) struct Stage1Context {
    pub(super) events: Events,
}

impl ClientContext for Stage1Context {}

impl ConsumerContext for Stage1Context {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let ids = tpl.elements().iter().map(|e| e.partition()).collect();
            self.events.push(false, ids);
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let ids = tpl.elements().iter().map(|e| e.partition()).collect();
            self.events.push(true, ids);
        }
    }
}

pub(super) struct Stage1 {
    pub(super) consumer: ClientConfig,
    pub(super) producer: ClientConfig,
    /// Each view over the source: its exchange topic and figures.
    pub(super) views: Vec<(Arc<ClusterView>, String, Arc<ViewStatus>)>,
    pub(super) input: ClusterInput,
    pub(super) handle: tokio::runtime::Handle,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) inputs_owned: Arc<Mutex<Vec<i32>>>,
    pub(super) failure: Arc<Mutex<Option<WeirError>>>,
    pub(super) step_rows: usize,
    pub(super) step_delay: Duration,
    /// One decoder per thread that folds partitions (the machine's cores).
    pub(super) decoders: Vec<Box<dyn crate::format::RecordDecoder>>,
}

impl Stage1 {
    pub(super) fn run(mut self) {
        let mut backoff = RESTART.start();
        while !self.stop.load(Ordering::Relaxed) {
            match self.session() {
                Ok(()) => return,
                // A bad record under 'bad.records' = 'fail' stops the member, as it
                // stops a single process.
                Err(e @ WeirError::BadRecord(_)) => {
                    *self.failure.lock() = Some(e);
                    return;
                }
                Err(e) => {
                    let wait = backoff.next_delay().unwrap_or(Duration::from_secs(10));
                    tracing::warn!(source = %self.input.source(), error = %e, ?wait,
                        "stage 1 stopped; starting again from the committed input positions");
                    std::thread::sleep(wait);
                }
            }
        }
    }

    /// Read, fold and send until stopped or a step fails (the caller starts again).
    fn session(&mut self) -> Result<()> {
        let consumer: BaseConsumer<Stage1Context> = self
            .consumer
            .create_with_context(Stage1Context {
                events: Events::default(),
            })
            .map_err(|e| kafka_error("creating the stage-1 consumer", e))?;
        consumer
            .subscribe(&[self.input.topic()])
            .map_err(|e| kafka_error("subscribing to the input topic", e))?;
        let producer: ThreadedProducer<DefaultProducerContext> = self
            .producer
            .create()
            .map_err(|e| kafka_error("creating the exchange producer", e))?;
        producer
            .init_transactions(TXN_TIMEOUT)
            .map_err(|e| kafka_error("starting exchange transactions", e))?;
        self.inputs_owned.lock().clear();
        let mut pending: BTreeMap<i32, Pending> = BTreeMap::new();
        // The latest event time of each owned input partition.
        let mut latest: BTreeMap<i32, i64> = BTreeMap::new();
        let (max_rows, max_delay) = (
            self.step_rows.max(1),
            self.step_delay.max(Duration::from_millis(10)),
        );
        while !self.stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            let mut taken = 0;
            let mut unclocked = 0u32;
            while taken < max_rows {
                // Messages already fetched are taken without a wait; the clock is read
                // when none is, and once every CLOCK_EVERY messages (reading it for each
                // took 7 % of the stage-1 thread).
                let polled = match consumer.poll(Duration::ZERO) {
                    Some(m) => {
                        unclocked += 1;
                        if unclocked >= CLOCK_EVERY {
                            unclocked = 0;
                            if started.elapsed() >= max_delay {
                                taken = max_rows;
                            }
                        }
                        Some(m)
                    }
                    None => {
                        let left = max_delay.saturating_sub(started.elapsed());
                        if left.is_zero() {
                            break;
                        }
                        consumer.poll(left.min(Duration::from_millis(100)))
                    }
                };
                // What a rebalance took away is dropped: its new owner reads it again from
                // the committed position.
                let events = consumer.context().events.take();
                for (assigned, ids) in events {
                    let mut owned = self.inputs_owned.lock();
                    for id in ids {
                        if assigned {
                            if !owned.contains(&id) {
                                owned.push(id);
                            }
                        } else {
                            owned.retain(|p| *p != id);
                            pending.remove(&id);
                            latest.remove(&id);
                        }
                    }
                    owned.sort_unstable();
                    for (_, _, status) in &self.views {
                        status.rebalances.fetch_add(1, Ordering::Relaxed);
                        *status.inputs.lock() = owned.clone();
                    }
                    tracing::info!(source = %self.input.source(), inputs = ?*owned,
                        "stage 1: input partitions owned");
                }
                match polled {
                    Some(Ok(m)) => {
                        pending
                            .entry(m.partition())
                            .or_default()
                            .push(&m, self.input.stats());
                        taken += 1;
                    }
                    Some(Err(e)) => return Err(kafka_error("reading the input topic", e)),
                    None => {
                        if self.stop.load(Ordering::Relaxed) {
                            return Ok(());
                        }
                    }
                }
            }
            if pending.values().all(|p| p.is_empty()) {
                continue;
            }
            let records: u64 = pending.values().map(|p| p.len() as u64).sum();
            if let Err(e) = self.step(&consumer, &producer, &mut pending, &mut latest) {
                for (_, _, status) in &self.views {
                    status.aborted.fetch_add(1, Ordering::Relaxed);
                }
                // What the step read is read again: after a rebalance (the usual cause:
                // the group moved on while the step ran) from the positions committed
                // for the partitions this member still owns. A producer that cannot abort
                // (fenced) starts the stage again.
                pending.clear();
                if matches!(e, WeirError::BadRecord(_)) {
                    return Err(e);
                }
                tracing::info!(source = %self.input.source(), error = %e,
                    "stage 1: a step was aborted; reading it again");
                producer
                    .abort_transaction(TXN_TIMEOUT)
                    .map_err(|a| kafka_error("aborting a stage-1 transaction", a))?;
                rewind(&consumer)?;
                continue;
            }
            for (_, _, status) in &self.views {
                status.committed.fetch_add(1, Ordering::Relaxed);
                status.records_in.fetch_add(records, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// One transaction: every pending partition's partial states and watermark, its dead
    /// letters, and the input positions after it.
    fn step(
        &mut self,
        consumer: &BaseConsumer<Stage1Context>,
        producer: &ThreadedProducer<DefaultProducerContext>,
        pending: &mut BTreeMap<i32, Pending>,
        latest: &mut BTreeMap<i32, i64>,
    ) -> Result<()> {
        producer
            .begin_transaction()
            .map_err(|e| kafka_error("beginning a stage-1 transaction", e))?;
        let mut offsets = TopicPartitionList::new();
        let topic = self.input.topic().to_string();
        for (partition, p, folded) in self.fold(pending)? {
            let Some(next) = p.next_offset() else {
                continue;
            };
            if !folded.bad.is_empty() {
                match self.input.policy() {
                    BadRecords::Fail => {
                        let (j, reason) = &folded.bad[0];
                        return Err(WeirError::BadRecord(format!(
                            "source '{}': topic {topic} partition {partition} offset {}: {reason}",
                            self.input.source(),
                            p.message(*j).0
                        )));
                    }
                    BadRecords::Skip => {}
                    BadRecords::DeadLetter => {
                        self.dead_letters(producer, partition, p, &folded.bad)?
                    }
                }
            }
            let from = partition as u32;
            let mut max_event = None;
            for ((_, exchange, status), out) in self.views.iter().zip(folded.views) {
                max_event = max_event.max(out.max_event_ms);
                for (kp, states) in out.states.into_iter().enumerate() {
                    for batch in states {
                        let data = Message::Data {
                            partition: kp as u32,
                            batch,
                        };
                        send(producer, exchange, status, kp, from, &data)?;
                    }
                }
            }
            if let Some(m) = max_event {
                let l = latest.entry(partition).or_insert(m);
                *l = (*l).max(m);
            }
            if let Some(l) = latest.get(&partition) {
                for (view, exchange, status) in &self.views {
                    let w = Message::Watermark(view.watermark_after(*l));
                    for kp in 0..view.key_partitions as usize {
                        send(producer, exchange, status, kp, from, &w)?;
                    }
                }
            }
            offsets
                .add_partition_offset(&topic, partition, Offset::Offset(next))
                .map_err(|e| kafka_error("recording input positions", e))?;
            p.clear();
        }
        let group = consumer
            .group_metadata()
            .ok_or_else(|| WeirError::Internal("the stage-1 consumer has no group".into()))?;
        producer
            .send_offsets_to_transaction(&offsets, &group, TXN_TIMEOUT)
            .map_err(|e| kafka_error("adding input positions to the stage-1 transaction", e))?;
        producer
            .commit_transaction(TXN_TIMEOUT)
            .map_err(|e| kafka_error("committing a stage-1 transaction", e))?;
        Ok(())
    }

    /// Decode each pending partition's messages and run every view's stage 1 over them,
    /// the partitions shared out over one thread per decoder; in partition order.
    fn fold<'a>(
        &mut self,
        pending: &'a mut BTreeMap<i32, Pending>,
    ) -> Result<Vec<(i32, &'a mut Pending, Folded)>> {
        let work: Vec<(i32, &'a mut Pending)> = pending
            .iter_mut()
            .filter(|(_, p)| !p.is_empty())
            .map(|(k, p)| (*k, p))
            .collect();
        let threads = self.decoders.len().min(work.len()).max(1);
        let (input, views, handle) = (&self.input, &self.views, &self.handle);
        let fold_one = |decoder: &mut dyn crate::format::RecordDecoder,
                        partition: i32,
                        p: &Pending|
         -> Result<Folded> {
            let decoded = input.decode(decoder, partition, p)?;
            let mut out = Vec::with_capacity(views.len());
            for (view, _, _) in views {
                out.push(handle.block_on(view.stage1(&decoded.batch))?);
            }
            Ok(Folded {
                bad: decoded.bad,
                views: out,
            })
        };
        let mut results: Vec<FoldSlot> = (0..work.len()).map(|_| None).collect();
        std::thread::scope(|scope| {
            let mut slots: Vec<Vec<(usize, &mut FoldSlot)>> =
                (0..threads).map(|_| Vec::new()).collect();
            for (i, slot) in results.iter_mut().enumerate() {
                slots[i % threads].push((i, slot));
            }
            for (decoder, mine) in self.decoders.iter_mut().zip(slots) {
                let work = &work;
                let fold_one = &fold_one;
                scope.spawn(move || {
                    for (i, slot) in mine {
                        let (partition, p) = &work[i];
                        *slot = Some(fold_one(decoder.as_mut(), *partition, p));
                    }
                });
            }
        });
        let mut out = Vec::with_capacity(work.len());
        for ((partition, p), r) in work.into_iter().zip(results) {
            let folded =
                r.ok_or_else(|| WeirError::Internal("a partition was not folded".into()))??;
            out.push((partition, p, folded));
        }
        Ok(out)
    }

    fn dead_letters(
        &self,
        producer: &ThreadedProducer<DefaultProducerContext>,
        partition: i32,
        p: &Pending,
        bad: &[(usize, String)],
    ) -> Result<()> {
        let topic = self.input.dead_letter_topic().to_string();
        for (j, reason) in bad {
            let (offset, ts, payload) = p.message(*j);
            let headers = dead_letter_headers(
                reason,
                self.input.source(),
                self.input.topic(),
                partition,
                offset,
                ts,
            );
            let record: BaseRecord<'_, (), [u8]> =
                BaseRecord::to(&topic).payload(payload).headers(headers);
            produce(producer, record, "sending a dead letter")?;
        }
        Ok(())
    }
}

/// Where a folding thread leaves one partition's result.
pub(super) type FoldSlot = Option<Result<Folded>>;

/// One input partition's step after stage 1: its bad records and each view's partial
/// states.
pub(super) struct Folded {
    pub(super) bad: Vec<(usize, String)>,
    pub(super) views: Vec<weir_engine::cluster::Stage1Batch>,
}

/// Move the consumer back to the committed positions of the partitions it owns.
pub(super) fn rewind<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> Result<()> {
    let assigned = consumer
        .assignment()
        .map_err(|e| kafka_error("reading the stage-1 assignment", e))?;
    if assigned.count() == 0 {
        return Ok(());
    }
    let committed = consumer
        .committed_offsets(assigned, METADATA_TIMEOUT)
        .map_err(|e| kafka_error("reading the committed input positions", e))?;
    let mut to = TopicPartitionList::new();
    for e in committed.elements() {
        let at = match e.offset() {
            Offset::Offset(o) => Offset::Offset(o),
            _ => Offset::Beginning,
        };
        to.add_partition_offset(e.topic(), e.partition(), at)
            .map_err(|e| kafka_error("rewinding stage 1", e))?;
    }
    consumer
        .seek_partitions(to, METADATA_TIMEOUT)
        .map_err(|e| kafka_error("rewinding stage 1", e))?;
    Ok(())
}

/// Send one exchange record to partition `kp` of `exchange`, waiting while the
/// producer's queue is full.
pub(super) fn send(
    producer: &ThreadedProducer<DefaultProducerContext>,
    exchange: &str,
    status: &ViewStatus,
    kp: usize,
    from: u32,
    message: &Message,
) -> Result<()> {
    let (headers, value) = record_of(from, message)?;
    status
        .exchange_bytes
        .fetch_add(value.len() as u64, Ordering::Relaxed);
    let record: BaseRecord<'_, (), [u8]> = BaseRecord::to(exchange)
        .partition(kp as i32)
        .payload(value.as_slice())
        .headers(headers);
    produce(producer, record, "sending to the exchange")
}

/// Produce `record`, waiting while the producer's queue is full.
pub(super) fn produce<K: rdkafka::message::ToBytes + ?Sized>(
    producer: &ThreadedProducer<DefaultProducerContext>,
    mut record: BaseRecord<'_, K, [u8]>,
    doing: &str,
) -> Result<()> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((
                KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                r,
            )) => {
                std::thread::sleep(Duration::from_millis(5));
                record = r;
            }
            Err((e, _)) => return Err(kafka_error(doing, e)),
        }
    }
}
