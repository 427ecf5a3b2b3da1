//! Stage 2 of a keyed TUMBLE or HOP aggregate as long-lived tasks fed by the exchange
//! (docs/design/workers.md, steps 3, 5 and 8).
//!
//! A view with several key partitions and several workers gets one task per worker for as
//! long as it runs; task `t` owns the key partitions `kp` with `kp % tasks == t`. The
//! driver, which takes stage 1's partial states in the order their batches arrived, is the
//! tasks' one input: it sends each partition's share of a micro-batch as
//! [`Message::Data`] and goes on with the next batch while the tasks merge (the merges of
//! one batch run on every worker at once, and overlap the driver's next step). Watermarks
//! travel in band behind the data: a task that takes watermark `w` from its [`Aligner`]
//! closes its partitions' windows at `w` and, when a window ended (the rule,
//! `WindowAggregator::closes_any`, depends on the watermarks only, so the driver knows it
//! too), sends the pieces back; the driver puts the pieces of each window together in
//! partition order, so the output is the same at any worker count. A checkpoint barrier
//! is aligned by the task's [`Aligner`] and the task snapshots its partitions there. A
//! [`Message::Mark`] lets the driver read the partitions' state directly once every task
//! has handled what came before (early results, rows folded on the driver).
//!
//! A failed task sends its error and stops; the driver returns that error at its next
//! send or wait, and the view stops (restart from the last checkpoint), as any failed
//! step does.

use super::exchange::{
    Aligner, ExchangeReceiver, ExchangeSender, MemoryReceiver, MemorySender, Message, Step,
    in_memory,
};
use crate::error::{Result, WeirError};
use crate::window::WindowAggregator;
use datafusion::arrow::record_batch::RecordBatch;
use parking_lot::Mutex;
use std::sync::Arc;
use tokio::sync::mpsc;

/// One key partition's state, shared by its stage-2 task (which does the work) and the
/// view (which reads it between steps, once the tasks are idle).
pub type Part = Arc<Mutex<WindowAggregator>>;

/// The pieces of closed windows, per key partition: `(partition, [(window tag, rows)])`.
pub type Pieces = Vec<(usize, Vec<(i64, RecordBatch)>)>;

/// Messages each stage-2 task may have queued before the driver waits.
const QUEUED: usize = 16;

enum Reply {
    Closed(Pieces),
    Snapshot(u64, Vec<(usize, Vec<RecordBatch>)>),
    Marked(u64),
    Failed(WeirError),
}

/// A view's stage-2 tasks, seen from the driver.
pub struct Stage2 {
    exchange: MemorySender,
    replies: Vec<mpsc::UnboundedReceiver<Reply>>,
    tasks: usize,
    marks: u64,
    /// Data sent since the tasks last answered: they may still be working on it.
    busy: bool,
    /// What the first task to fail said (later calls repeat it).
    failure: Option<String>,
}

impl Stage2 {
    /// Start `tasks` tasks on the current Tokio runtime over `parts`.
    pub fn spawn(parts: &[Part], tasks: usize) -> Stage2 {
        let tasks = tasks.clamp(1, parts.len().max(1));
        let (mut senders, receivers) = in_memory(1, tasks, QUEUED);
        let mut replies = Vec::with_capacity(tasks);
        for (t, rx) in receivers.into_iter().enumerate() {
            let owned: Vec<(usize, Part)> = parts
                .iter()
                .enumerate()
                .filter(|(kp, _)| kp % tasks == t)
                .map(|(kp, p)| (kp, p.clone()))
                .collect();
            let (out, reply) = mpsc::unbounded_channel();
            tokio::spawn(run(owned, rx, out));
            replies.push(reply);
        }
        tracing::debug!(tasks, partitions = parts.len(), "stage-2 tasks started");
        Stage2 {
            exchange: senders.remove(0),
            replies,
            tasks,
            marks: 0,
            busy: false,
            failure: None,
        }
    }

    pub fn tasks(&self) -> usize {
        self.tasks
    }

    /// Hand key partition `kp` its share of a step; returns at once unless its task's
    /// queue is full.
    pub async fn send(&mut self, kp: usize, states: Vec<RecordBatch>) -> Result<()> {
        self.check()?;
        let to = kp % self.tasks;
        for batch in states {
            let message = Message::Data {
                partition: kp as u32,
                batch,
            };
            if self.exchange.send(to, message).await.is_err() {
                return Err(self.stopped(to));
            }
            self.busy = true;
        }
        Ok(())
    }

    /// Move every task's watermark to `watermark_ms` (a watermark that does not move is
    /// dropped by the tasks' aligners); when `closes` (a window ended), wait for the pieces
    /// of the windows that closed, in partition order.
    pub async fn close(&mut self, watermark_ms: i64, closes: bool) -> Result<Pieces> {
        self.check()?;
        self.send_all(Message::Watermark(watermark_ms)).await?;
        if !closes {
            return Ok(vec![]);
        }
        let mut pieces = self
            .gather("closed windows", |r| match r {
                Reply::Closed(p) => Some(p),
                _ => None,
            })
            .await?;
        pieces.sort_by_key(|(kp, _)| *kp);
        Ok(pieces)
    }

    /// Wait until every task has handled everything sent so far.
    pub async fn sync(&mut self) -> Result<()> {
        self.check()?;
        if !self.busy {
            return Ok(());
        }
        self.marks += 1;
        let id = self.marks;
        self.send_all(Message::Mark(id)).await?;
        self.gather("its mark", |r| {
            matches!(r, Reply::Marked(m) if m == id).then(Vec::<()>::new)
        })
        .await?;
        Ok(())
    }

    /// Checkpoint `epoch`: every task snapshots its partitions when the barrier reaches it;
    /// the states per key partition, in partition order.
    pub async fn checkpoint(&mut self, epoch: u64) -> Result<Vec<(usize, Vec<RecordBatch>)>> {
        self.check()?;
        self.send_all(Message::Barrier(epoch)).await?;
        let mut states = self
            .gather("its snapshot", |r| match r {
                Reply::Snapshot(e, s) if e == epoch => Some(s),
                _ => None,
            })
            .await?;
        states.sort_by_key(|(kp, _)| *kp);
        Ok(states)
    }

    /// One reply from every task, in task order, each taken apart by `take` (`None`: not
    /// the reply `expected`). The tasks are idle afterwards.
    async fn gather<T>(
        &mut self,
        expected: &str,
        mut take: impl FnMut(Reply) -> Option<Vec<T>>,
    ) -> Result<Vec<T>> {
        let mut all = Vec::new();
        for t in 0..self.tasks {
            let reply = self.reply(t).await?;
            all.extend(take(reply).ok_or_else(|| protocol(t, expected))?);
        }
        self.busy = false;
        Ok(all)
    }

    async fn send_all(&mut self, message: Message) -> Result<()> {
        for to in 0..self.tasks {
            if self.exchange.send(to, message.clone()).await.is_err() {
                return Err(self.stopped(to));
            }
        }
        Ok(())
    }

    async fn reply(&mut self, t: usize) -> Result<Reply> {
        match self.replies[t].recv().await {
            Some(Reply::Failed(e)) => Err(self.failed(e)),
            Some(r) => Ok(r),
            None => Err(self.gone(t)),
        }
    }

    /// Task `t` took no more input: the error it stopped with.
    fn stopped(&mut self, t: usize) -> WeirError {
        match self.replies[t].try_recv() {
            Ok(Reply::Failed(e)) => self.failed(e),
            _ => self.gone(t),
        }
    }

    /// A task failed before: nothing the view does can succeed.
    fn check(&self) -> Result<()> {
        match self.failure {
            Some(_) => Err(self.gone(0)),
            None => Ok(()),
        }
    }

    fn failed(&mut self, e: WeirError) -> WeirError {
        self.failure.get_or_insert_with(|| e.to_string());
        e
    }

    fn gone(&self, t: usize) -> WeirError {
        WeirError::Internal(match &self.failure {
            Some(f) => format!("a stage-2 task of the view failed earlier: {f}"),
            None => format!(
                "stage-2 task {t} stopped (it panicked); the view's state is lost: restart \
                 from the last checkpoint"
            ),
        })
    }
}

fn protocol(t: usize, expected: &str) -> WeirError {
    WeirError::Internal(format!(
        "stage-2 task {t} answered out of turn (expected {expected})"
    ))
}

/// One stage-2 task: handle what the exchange brings, in the order the aligner gives.
async fn run(
    parts: Vec<(usize, Part)>,
    mut input: MemoryReceiver,
    out: mpsc::UnboundedSender<Reply>,
) {
    let mut aligner = Aligner::new(1);
    while let Some(envelope) = input.recv().await {
        let handled = aligner.push(envelope).and_then(|steps| {
            for step in steps {
                if let Some(reply) = handle(&parts, step)? {
                    // The driver is gone: so is the view.
                    if out.send(reply).is_err() {
                        break;
                    }
                }
            }
            Ok(())
        });
        if let Err(e) = handled {
            let _ = out.send(Reply::Failed(e));
            return;
        }
    }
}

fn handle(parts: &[(usize, Part)], step: Step) -> Result<Option<Reply>> {
    Ok(match step {
        Step::Data {
            partition, batch, ..
        } => {
            let part = parts
                .iter()
                .find(|(kp, _)| *kp == partition as usize)
                .ok_or_else(|| {
                    WeirError::Internal(format!(
                        "key partition {partition} sent to a task that does not own it"
                    ))
                })?;
            part.1.lock().merge_states(std::slice::from_ref(&batch))?;
            None
        }
        Step::Watermark(w) => {
            let closes = match parts.first() {
                Some((_, p)) => p.lock().closes_any(w),
                None => false,
            };
            let mut pieces = Vec::with_capacity(parts.len());
            for (kp, p) in parts {
                let closed = p.lock().close_windows(w)?;
                pieces.push((*kp, closed));
            }
            closes.then_some(Reply::Closed(pieces))
        }
        Step::Checkpoint(epoch) => {
            let mut states = Vec::with_capacity(parts.len());
            for (kp, p) in parts {
                states.push((*kp, p.lock().snapshot()?));
            }
            Some(Reply::Snapshot(epoch, states))
        }
        Step::Mark { id, .. } => Some(Reply::Marked(id)),
        Step::End => None,
    })
}
