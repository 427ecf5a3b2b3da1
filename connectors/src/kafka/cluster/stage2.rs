//! Stage 2 of a cluster member: a view's key partitions, their snapshots in the state
//! directory and the offsets committed with them.

use super::*;

/// One owned key partition.
pub(super) struct Owned {
    pub(super) task: KeyTask,
    /// The next exchange offset to take.
    pub(super) next: i64,
    /// The offset of the last snapshot committed (or restored).
    pub(super) committed: i64,
    /// Rows of closed windows this partition has emitted (row ids for append sinks).
    pub(super) emitted: u64,
    /// The view's Parquet sinks for this key partition (one per sink of the view, in
    /// order), publishing their files when the member commits.
    pub(super) files: Vec<ParquetSink>,
    /// The file names of the committed snapshot and the one before it.
    pub(super) snapshot: String,
    pub(super) previous: String,
}

/// Stage 2's state, shared by its polling loop and its rebalance callbacks (both run on
/// the stage-2 thread, inside or after `poll`).
pub(super) struct Stage2Shared {
    pub(super) view: Arc<ClusterView>,
    pub(super) topic: String,
    pub(super) inputs: usize,
    pub(super) dir: PathBuf,
    pub(super) handle: tokio::runtime::Handle,
    /// The view's sinks that write by key (Postgres): written as rows come, flushed
    /// before each commit.
    pub(super) sinks: Vec<Box<dyn Sink>>,
    /// The view's Kafka sinks: their messages go in the member's stage-2 transactions.
    pub(super) kafka: Vec<Box<dyn Sink>>,
    /// The view's Parquet sinks, as templates: each owned key partition writes through
    /// sinks of its own ([`Owned::files`]).
    pub(super) parquet: Vec<Box<dyn Sink>>,
    /// This member's part of snapshot file names (member id, process id), and the
    /// session count: a snapshot's name is unique to its writer, so a paused member that
    /// wakes up cannot replace the one its successor committed.
    pub(super) writer: String,
    pub(super) session: u64,
    /// The transactional producer's config: one producer per session, which writes the
    /// results topic and the Kafka sinks and commits the exchange offsets, all in one
    /// transaction per snapshot interval (KIP-447: the group's metadata fences a zombie).
    pub(super) producer_config: ClientConfig,
    pub(super) producer: Option<ThreadedProducer<DefaultProducerContext>>,
    /// A transaction is open on `producer`.
    pub(super) in_txn: bool,
    /// Every row the view emits goes to its results topic too, for every member to serve.
    pub(super) results_topic: String,
    pub(super) owned: BTreeMap<i32, Owned>,
    pub(super) status: Arc<ViewStatus>,
    /// The sinks' fencing scope for this view (`weir.<group>.<view>`; each sink adds its
    /// name): a take-over claims its key partitions under it ([`Sink::claim`]).
    pub(super) fence_scope: String,
}

pub(super) struct Stage2Context {
    pub(super) shared: Arc<Mutex<Stage2Shared>>,
    /// An error a callback met: the loop stops with it.
    pub(super) failed: Mutex<Option<WeirError>>,
}

impl ClientContext for Stage2Context {}

impl ConsumerContext for Stage2Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let ids: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        let mut shared = self.shared.lock();
        shared.status.rebalances.fetch_add(1, Ordering::Relaxed);
        // A lost assignment (this member was thrown out, for example paused past the
        // session timeout) cannot commit, and what its sinks hold may already belong to
        // the new owners: the session starts again, discarding the sinks' unflushed rows
        // and taking over afresh what the group assigns.
        let lost = consumer.assignment_lost();
        let result = if lost {
            Err(WeirError::Fenced(format!(
                "view '{}': key partitions {ids:?} were lost (this member left the group)",
                shared.view.view
            )))
        } else {
            // The open transaction holds every owned partition's output: all of them are
            // committed with their offsets, not only the revoked ones.
            shared.checkpoint(consumer)
        };
        for id in &ids {
            shared.owned.remove(id);
        }
        let kps: Vec<u32> = ids.iter().map(|&k| k as u32).collect();
        for sink in &mut shared.sinks {
            sink.release(&kps);
        }
        shared.publish_keys();
        tracing::info!(view = %shared.view.view, revoked = ?ids, lost, "stage 2: key partitions revoked");
        if let Err(e) = result {
            *self.failed.lock() = Some(e);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(tpl) = rebalance else {
            return;
        };
        let ids: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        if ids.is_empty() {
            return;
        }
        let mut shared = self.shared.lock();
        shared.status.rebalances.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = shared.take_over(consumer, &ids) {
            *self.failed.lock() = Some(e);
        }
    }
}

impl Stage2Shared {
    fn publish_keys(&self) {
        *self.status.keys.lock() = self.owned.keys().copied().collect();
    }

    fn part_dir(&self, kp: i32) -> PathBuf {
        self.dir.join(format!("kp-{kp}"))
    }

    /// Own `ids`: each starts from its committed offset, with the snapshot written for it.
    fn take_over(&mut self, consumer: &BaseConsumer<Stage2Context>, ids: &[i32]) -> Result<()> {
        let mut tpl = TopicPartitionList::new();
        for id in ids {
            tpl.add_partition(&self.topic, *id);
        }
        let committed = consumer
            .committed_offsets(tpl, METADATA_TIMEOUT)
            .map_err(|e| kafka_error("reading stage 2's committed offsets", e))?;
        // Fence the former owners first: from here on a late write of theirs with rows of
        // these partitions is rolled back.
        let kps: Vec<u32> = ids.iter().map(|&k| k as u32).collect();
        for sink in &mut self.sinks {
            self.handle.block_on(sink.claim(&self.fence_scope, &kps))?;
        }
        for e in committed.elements() {
            let kp = e.partition();
            let started = Instant::now();
            let mut task = self.view.task(self.inputs)?;
            let mut files = Vec::new();
            for template in &mut self.parquet {
                files.push(parquet_sink(template)?.for_key_partition(kp as u32)?);
            }
            // The committed offset's metadata names the snapshot written for it.
            let name = match e.metadata() {
                "" => None,
                m => Some(m.to_string()),
            };
            let (at, emitted, name) = match e.offset() {
                Offset::Offset(o) => {
                    let name = name.unwrap_or_else(|| format!("{o:020}.arrow"));
                    let (snapshot, meta) = read_snapshot(&self.part_dir(kp).join(&name))?;
                    task.restore(&snapshot)?;
                    // Publish the Parquet files the snapshot's commit staged (if its
                    // owner did not get to it) and remove every other unpublished file.
                    for (i, f) in files.iter_mut().enumerate() {
                        let cp = meta["parquet"][i].clone();
                        self.handle.block_on(f.recover(Some((o as u64, cp))))?;
                    }
                    (o, meta["emitted"].as_u64().unwrap_or(0), name)
                }
                _ => {
                    for f in &mut files {
                        self.handle.block_on(f.recover(None))?;
                    }
                    (0, 0, String::new())
                }
            };
            let groups = task.open_groups();
            let ms = started.elapsed().as_millis() as u64;
            *self.status.last_restore.lock() = Some((kp, groups, ms));
            tracing::info!(view = %self.view.view, kp, offset = at, open_groups = groups, ms,
                "stage 2: key partition taken over");
            self.owned.insert(
                kp,
                Owned {
                    task,
                    next: at,
                    committed: at,
                    emitted,
                    files,
                    snapshot: name,
                    previous: String::new(),
                },
            );
        }
        self.publish_keys();
        Ok(())
    }

    /// Take one exchange record of an owned partition.
    fn take(&mut self, m: &rdkafka::message::BorrowedMessage<'_>) -> Result<()> {
        let kp = m.partition();
        let Some(owned) = self.owned.get_mut(&kp) else {
            return Ok(());
        };
        if m.offset() < owned.next {
            return Ok(());
        }
        let envelope = envelope_of(m)?;
        let rows = self.handle.block_on(owned.task.push(envelope))?;
        owned.next = m.offset() + 1;
        let watermark = owned.task.watermark();
        for batch in rows {
            let ids = RowIds {
                origin: kp as u32,
                first: owned.emitted,
            };
            let (headers, value) = results_record(ids, watermark, &batch)?;
            let producer = open_txn(&self.producer, &mut self.in_txn)?;
            let record: BaseRecord<'_, (), [u8]> = BaseRecord::to(&self.results_topic)
                .partition(0)
                .payload(value.as_slice())
                .headers(headers);
            produce(producer, record, "sending to the results topic")?;
            for sink in &mut self.kafka {
                let k = kafka_sink(sink)?;
                let doing = format!("writing to kafka sink '{}'", k.name());
                k.cluster_messages(&batch, |topic, partition, key, value| {
                    let mut r: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic);
                    r.partition = partition;
                    r.key = key;
                    r.payload = value;
                    produce(producer, r, &doing)
                })?;
            }
            owned.emitted += batch.num_rows() as u64;
            self.status
                .rows_out
                .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
            for sink in &mut self.sinks {
                self.handle.block_on(sink.write(batch.clone(), ids))?;
            }
            for f in &mut owned.files {
                self.handle.block_on(f.write(batch.clone(), ids))?;
            }
        }
        Ok(())
    }

    /// Flush the sinks that write by key, snapshot the owned partitions that moved since
    /// their last snapshot, and commit the open transaction (the results and Kafka sink
    /// messages) with their exchange offsets. A failure leaves the transaction aborted:
    /// the caller starts the session again from the committed snapshots.
    fn checkpoint(&mut self, consumer: &BaseConsumer<Stage2Context>) -> Result<()> {
        for sink in &mut self.sinks {
            self.handle.block_on(sink.flush())?;
        }
        let mut tpl = TopicPartitionList::new();
        let mut written = Vec::new();
        let dir = self.dir.clone();
        for (kp, owned) in self.owned.iter_mut() {
            if owned.next == owned.committed {
                continue;
            }
            let part = dir.join(format!("kp-{kp}"));
            let snapshot = owned.task.snapshot()?;
            // The Parquet files of this stretch are finished and staged; the snapshot
            // lists them, and they are published once the transaction commits.
            let mut staged = Vec::new();
            for f in &mut owned.files {
                staged.push(self.handle.block_on(f.precommit(owned.next as u64))?);
            }
            let name = format!("{:020}.{}.{}.arrow", owned.next, self.writer, self.session);
            let extra = serde_json::json!({ "emitted": owned.emitted, "parquet": staged });
            write_snapshot(&part, &name, &snapshot, extra)?;
            tpl.add_partition(&self.topic, *kp)
                .set_offset(Offset::Offset(owned.next))
                .map_err(|e| kafka_error("recording stage-2 offsets", e))?;
            if let Some(mut e) = tpl.find_partition(&self.topic, *kp) {
                e.set_metadata(&name);
            }
            written.push((*kp, owned.next, name));
        }
        if written.is_empty() && !self.in_txn {
            return Ok(());
        }
        if let Err(e) = self.commit(consumer, &tpl) {
            self.abort();
            return Err(e);
        }
        for (kp, at, name) in written {
            let part = self.part_dir(kp);
            if let Some(o) = self.owned.get_mut(&kp) {
                o.committed = at;
                o.previous = std::mem::replace(&mut o.snapshot, name);
                for f in &mut o.files {
                    self.handle.block_on(f.commit(at as u64))?;
                }
                prune(&part, at, &[&o.snapshot, &o.previous]);
            }
            self.status.snapshots.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn commit(
        &mut self,
        consumer: &BaseConsumer<Stage2Context>,
        offsets: &TopicPartitionList,
    ) -> Result<()> {
        let group = consumer
            .group_metadata()
            .ok_or_else(|| WeirError::Internal("the stage-2 consumer has no group".into()))?;
        let p = open_txn(&self.producer, &mut self.in_txn)?;
        p.send_offsets_to_transaction(offsets, &group, TXN_TIMEOUT)
            .map_err(|e| commit_error("adding exchange offsets to the stage-2 transaction", e))?;
        p.commit_transaction(TXN_TIMEOUT)
            .map_err(|e| commit_error("committing a stage-2 transaction", e))?;
        self.in_txn = false;
        Ok(())
    }

    /// Abort the open transaction, if any (a producer that cannot is dropped with the
    /// session; the broker aborts its transaction when the next one fences it).
    fn abort(&mut self) {
        if let (true, Some(p)) = (self.in_txn, &self.producer)
            && let Err(e) = p.abort_transaction(TXN_TIMEOUT)
        {
            tracing::warn!(view = %self.view.view, error = %e, "stage 2: aborting a transaction");
        }
        self.in_txn = false;
    }
}

/// A failed commit: [`WeirError::Fenced`] when the group no longer counts this member
/// (it was thrown out, for example paused past the session timeout) or a newer producer
/// fenced this one; otherwise the Kafka error.
fn commit_error(doing: &str, e: KafkaError) -> WeirError {
    use rdkafka::types::RDKafkaErrorCode as Code;
    let gone = e.rdkafka_error_code().is_some_and(|c| {
        crate::kafka::common::is_fenced(c)
            || matches!(
                c,
                Code::UnknownMemberId | Code::IllegalGeneration | Code::FencedInstanceId
            )
    });
    if gone {
        WeirError::Fenced(format!("{doing}: {e}"))
    } else {
        kafka_error(doing, e)
    }
}

/// The session's producer, in a transaction (begun if none is open).
fn open_txn<'a>(
    producer: &'a Option<ThreadedProducer<DefaultProducerContext>>,
    in_txn: &mut bool,
) -> Result<&'a ThreadedProducer<DefaultProducerContext>> {
    let p = producer
        .as_ref()
        .ok_or_else(|| WeirError::Internal("stage 2 without its producer".into()))?;
    if !*in_txn {
        p.begin_transaction()
            .map_err(|e| kafka_error("beginning a stage-2 transaction", e))?;
        *in_txn = true;
    }
    Ok(p)
}

/// A Parquet sink of a cluster view (only those go in `Stage2Shared::parquet`).
pub(super) fn parquet_sink(sink: &mut Box<dyn Sink>) -> Result<&mut ParquetSink> {
    sink.as_any_mut()
        .and_then(|a| a.downcast_mut::<ParquetSink>())
        .ok_or_else(|| WeirError::Internal("a cluster's parquet sink is not one".into()))
}

/// A Kafka sink of a cluster view (only those go in `Stage2Shared::kafka`).
pub(super) fn kafka_sink(sink: &mut Box<dyn Sink>) -> Result<&mut KafkaSink> {
    sink.as_any_mut()
        .and_then(|a| a.downcast_mut::<KafkaSink>())
        .ok_or_else(|| WeirError::Internal("a cluster's kafka sink is not one".into()))
}

pub(super) fn run_stage2(
    config: ClientConfig,
    shared: Stage2Shared,
    interval: Duration,
    stop: Arc<AtomicBool>,
) {
    let shared = Arc::new(Mutex::new(shared));
    let mut backoff = RESTART.start();
    {
        let mut s = shared.lock();
        let s = &mut *s;
        for sink in &mut s.sinks {
            while let Err(e) = s.handle.block_on(sink.recover(None)) {
                let wait = backoff.next_delay().unwrap_or(Duration::from_secs(10));
                tracing::warn!(view = %s.view.view, error = %e, ?wait, "a sink did not start; trying again");
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(wait);
            }
        }
    }
    while !stop.load(Ordering::Relaxed) {
        let result = stage2_session(&config, &shared, interval, &stop);
        {
            let mut s = shared.lock();
            if result.is_err() {
                s.abort();
            }
            s.producer = None;
        }
        match result {
            Ok(()) => break,
            Err(e) => {
                let wait = backoff.next_delay().unwrap_or(Duration::from_secs(10));
                if matches!(e, WeirError::Fenced(_)) {
                    shared.lock().status.fenced.fetch_add(1, Ordering::Relaxed);
                }
                tracing::warn!(error = %e, ?wait,
                    "stage 2 stopped; starting again from the committed snapshots");
                std::thread::sleep(wait);
            }
        }
    }
    let mut s = shared.lock();
    let s = &mut *s;
    for sink in &mut s.sinks {
        if let Err(e) = s.handle.block_on(sink.close()) {
            tracing::warn!(error = %e, "closing a sink");
        }
    }
}

/// Poll the exchange until stopped or an error. The partitions owned are dropped at the
/// start: after an error they are taken over again from their committed snapshots.
pub(super) fn stage2_session(
    config: &ClientConfig,
    shared: &Arc<Mutex<Stage2Shared>>,
    interval: Duration,
    stop: &AtomicBool,
) -> Result<()> {
    let topic = {
        let mut s = shared.lock();
        s.owned.clear();
        s.session += 1;
        for sink in &mut s.sinks {
            sink.discard();
        }
        s.publish_keys();
        // A new producer with the member's transactional id fences any earlier one (and
        // aborts its open transaction).
        let producer: ThreadedProducer<DefaultProducerContext> = s
            .producer_config
            .create()
            .map_err(|e| kafka_error("creating the stage-2 producer", e))?;
        producer
            .init_transactions(TXN_TIMEOUT)
            .map_err(|e| kafka_error("starting stage-2 transactions", e))?;
        s.producer = Some(producer);
        s.in_txn = false;
        s.topic.clone()
    };
    let consumer: BaseConsumer<Stage2Context> = config
        .create_with_context(Stage2Context {
            shared: shared.clone(),
            failed: Mutex::new(None),
        })
        .map_err(|e| kafka_error("creating the stage-2 consumer", e))?;
    consumer
        .subscribe(&[&topic])
        .map_err(|e| kafka_error("subscribing to the exchange", e))?;
    let mut last = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let polled = consumer.poll(Duration::from_millis(100));
        if let Some(e) = consumer.context().failed.lock().take() {
            return Err(e);
        }
        match polled {
            Some(Ok(m)) => shared.lock().take(&m)?,
            Some(Err(e)) => return Err(kafka_error("reading the exchange", e)),
            None => {}
        }
        if last.elapsed() >= interval {
            shared.lock().checkpoint(&consumer)?;
            last = Instant::now();
        }
    }
    // Stopping: hand over without a replay.
    shared.lock().checkpoint(&consumer)?;
    Ok(())
}

/// Write `snapshot` of a key partition as `dir/name` (write, sync, rename), with `extra`
/// (row count, sinks' staged files) in its metadata beside the state's.
pub(super) fn write_snapshot(
    dir: &Path,
    name: &str,
    snapshot: &KeySnapshot,
    extra: serde_json::Value,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| io_error("creating", dir, e))?;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut meta = snapshot.meta.clone();
    if let (Some(m), serde_json::Value::Object(extra)) = (meta.as_object_mut(), extra) {
        m.extend(extra);
    }
    let schema = datafusion::arrow::datatypes::Schema::new_with_metadata(
        snapshot.schema.fields().clone(),
        [("weir.state".to_string(), meta.to_string())].into(),
    );
    let file = std::fs::File::create(&tmp).map_err(|e| io_error("creating", &tmp, e))?;
    let mut w = FileWriter::try_new(file, &schema)?;
    for b in &snapshot.batches {
        let b = datafusion::arrow::record_batch::RecordBatch::try_new(
            Arc::new(schema.clone()),
            b.columns().to_vec(),
        )?;
        w.write(&b)?;
    }
    w.finish()?;
    let file = w.into_inner()?;
    file.sync_all().map_err(|e| io_error("syncing", &tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io_error("renaming", &tmp, e))?;
    weir_engine::fsutil::sync_dir(dir)
}

/// A key partition's snapshot and its metadata (the state's, with what
/// [`write_snapshot`] added).
pub(super) fn read_snapshot(path: &Path) -> Result<(KeySnapshot, serde_json::Value)> {
    let file = std::fs::File::open(path).map_err(|e| {
        WeirError::user(format!(
            "the snapshot a key partition was committed with is missing: {} ({e}); \
             is [cluster] state_dir the same directory on every member?",
            path.display()
        ))
    })?;
    let reader = FileReader::try_new(file, None)?;
    let schema = reader.schema();
    let meta: serde_json::Value = schema
        .metadata()
        .get("weir.state")
        .and_then(|m| serde_json::from_str(m).ok())
        .ok_or_else(|| {
            WeirError::Internal(format!("snapshot {} has no state meta", path.display()))
        })?;
    let plain = Arc::new(datafusion::arrow::datatypes::Schema::new(
        schema.fields().clone(),
    ));
    let mut batches = Vec::new();
    for b in reader {
        let b = b?;
        batches.push(datafusion::arrow::record_batch::RecordBatch::try_new(
            plain.clone(),
            b.columns().to_vec(),
        )?);
    }
    Ok((
        KeySnapshot {
            meta: meta.clone(),
            batches,
            schema: plain,
        },
        meta,
    ))
}

/// Remove a partition's snapshots from before offset `kept`, except the files in `keep`
/// (the committed snapshot and the one before it, for a member that read the committed
/// offset just before this commit).
pub(super) fn prune(dir: &Path, kept: i64, keep: &[&str]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let offset: Option<i64> = name
            .strip_suffix(".arrow")
            .and_then(|n| n.split('.').next())
            .and_then(|o| o.parse().ok());
        if offset.is_some_and(|o| o < kept) && !keep.contains(&name.as_str()) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_keeps_the_named_snapshots_and_newer_ones() {
        let dir = tempfile::tempdir().unwrap();
        let names = [
            "00000000000000000010.m1-7.1.arrow",
            "00000000000000000020.m1-7.1.arrow",
            "00000000000000000020.m2-9.3.arrow",
            "00000000000000000030.m2-9.3.arrow",
            "00000000000000000040.m1-7.2.arrow",
            ".00000000000000000005.m1-7.1.arrow.tmp",
        ];
        for n in names {
            std::fs::write(dir.path().join(n), b"x").unwrap();
        }
        prune(
            dir.path(),
            30,
            &[
                "00000000000000000030.m2-9.3.arrow",
                "00000000000000000020.m2-9.3.arrow",
            ],
        );
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec![
                ".00000000000000000005.m1-7.1.arrow.tmp",
                "00000000000000000020.m2-9.3.arrow",
                "00000000000000000030.m2-9.3.arrow",
                "00000000000000000040.m1-7.2.arrow",
            ]
        );
    }
}
