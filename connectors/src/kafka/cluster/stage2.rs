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
}

/// Stage 2's state, shared by its polling loop and its rebalance callbacks (both run on
/// the stage-2 thread, inside or after `poll`).
pub(super) struct Stage2Shared {
    pub(super) view: Arc<ClusterView>,
    pub(super) topic: String,
    pub(super) inputs: usize,
    pub(super) dir: PathBuf,
    pub(super) handle: tokio::runtime::Handle,
    pub(super) sinks: Vec<Box<dyn Sink>>,
    /// Every row the view emits goes to its results topic too, for every member to serve.
    pub(super) results: ThreadedProducer<DefaultProducerContext>,
    pub(super) results_topic: String,
    pub(super) owned: BTreeMap<i32, Owned>,
    pub(super) status: Arc<ViewStatus>,
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
        // A lost assignment (this member was thrown out) cannot commit: drop the state,
        // the new owner replays from the last committed snapshot.
        let lost = consumer.assignment_lost();
        let result = if lost {
            Ok(())
        } else {
            shared.checkpoint(consumer, Some(&ids))
        };
        for id in &ids {
            shared.owned.remove(id);
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
        for e in committed.elements() {
            let kp = e.partition();
            let started = Instant::now();
            let mut task = self.view.task(self.inputs)?;
            let (at, emitted) = match e.offset() {
                Offset::Offset(o) => {
                    let path = self.part_dir(kp).join(format!("{o:020}.arrow"));
                    let (snapshot, emitted) = read_snapshot(&path)?;
                    task.restore(&snapshot)?;
                    (o, emitted)
                }
                _ => (0, 0),
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
            let record: BaseRecord<'_, (), [u8]> = BaseRecord::to(&self.results_topic)
                .partition(0)
                .payload(value.as_slice())
                .headers(headers);
            produce(&self.results, record, "sending to the results topic")?;
            owned.emitted += batch.num_rows() as u64;
            self.status
                .rows_out
                .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
            for sink in &mut self.sinks {
                self.handle.block_on(sink.write(batch.clone(), ids))?;
            }
        }
        Ok(())
    }

    /// Flush the sinks, snapshot the owned partitions (`only` these, if given) that moved
    /// since their last snapshot, and commit their offsets.
    fn checkpoint(
        &mut self,
        consumer: &BaseConsumer<Stage2Context>,
        only: Option<&[i32]>,
    ) -> Result<()> {
        for sink in &mut self.sinks {
            self.handle.block_on(sink.flush())?;
        }
        self.results
            .flush(SEND_TIMEOUT)
            .map_err(|e| kafka_error("writing to the results topic", e))?;
        let mut tpl = TopicPartitionList::new();
        let mut written = Vec::new();
        let dir = self.dir.clone();
        for (kp, owned) in self.owned.iter_mut() {
            if only.is_some_and(|o| !o.contains(kp)) || owned.next == owned.committed {
                continue;
            }
            let part = dir.join(format!("kp-{kp}"));
            let snapshot = owned.task.snapshot()?;
            write_snapshot(&part, owned.next, &snapshot, owned.emitted)?;
            tpl.add_partition_offset(&self.topic, *kp, Offset::Offset(owned.next))
                .map_err(|e| kafka_error("recording stage-2 offsets", e))?;
            written.push((*kp, owned.next));
        }
        if written.is_empty() {
            return Ok(());
        }
        if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
            // The group moved on (a rebalance under way): the snapshots stay unused, the
            // partitions still owned are committed at the next interval.
            tracing::info!(view = %self.view.view, error = %e,
                "stage 2: offsets not committed this time");
            return Ok(());
        }
        for (kp, at) in written {
            if let Some(o) = self.owned.get_mut(&kp) {
                o.committed = at;
            }
            self.status.snapshots.fetch_add(1, Ordering::Relaxed);
            prune(&self.part_dir(kp), at);
        }
        Ok(())
    }
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
        match stage2_session(&config, &shared, interval, &stop) {
            Ok(()) => break,
            Err(e) => {
                let wait = backoff.next_delay().unwrap_or(Duration::from_secs(10));
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
        s.publish_keys();
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
            shared.lock().checkpoint(&consumer, None)?;
            last = Instant::now();
        }
    }
    // Stopping: hand over without a replay.
    shared.lock().checkpoint(&consumer, None)?;
    Ok(())
}

/// Write `snapshot` of a key partition at exchange offset `at` (write, sync, rename).
pub(super) fn write_snapshot(
    dir: &Path,
    at: i64,
    snapshot: &KeySnapshot,
    emitted: u64,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| io_error("creating", dir, e))?;
    let path = dir.join(format!("{at:020}.arrow"));
    let tmp = dir.join(format!(".{at:020}.arrow.tmp"));
    let mut meta = snapshot.meta.clone();
    meta["emitted"] = serde_json::json!(emitted);
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

pub(super) fn read_snapshot(path: &Path) -> Result<(KeySnapshot, u64)> {
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
    let emitted = meta.get("emitted").and_then(|e| e.as_u64()).unwrap_or(0);
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
            meta,
            batches,
            schema: plain,
        },
        emitted,
    ))
}

/// Remove a partition's snapshots older than the one before `kept` (the one before stays
/// for a member that read the committed offset just before this commit).
pub(super) fn prune(dir: &Path, kept: i64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut offsets: Vec<i64> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.strip_suffix(".arrow")?.parse().ok()
        })
        .filter(|o| *o < kept)
        .collect();
    offsets.sort_unstable();
    offsets.pop();
    for o in offsets {
        let _ = std::fs::remove_file(dir.join(format!("{o:020}.arrow")));
    }
}
