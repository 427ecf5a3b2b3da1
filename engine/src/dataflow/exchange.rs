//! The exchange between the two stages of keyed parallel execution (docs/design/workers.md):
//! senders (stage 1) send data for a key partition, watermarks, checkpoint barriers and
//! their end to stage-2 tasks (each owning some of a view's key partitions), and each
//! stage-2 task puts what it hears from all its inputs in the order it must handle it
//! ([`Aligner`]). A keyed window aggregate's stage-2 tasks (`stage2.rs`) are fed this way.
//!
//! The transport is behind two traits so that a Kafka-topic exchange (issue 16) can stand
//! in for the in-memory one ([`in_memory`]: one bounded channel per receiving task, so a
//! slow stage-2 task makes its senders wait: backpressure end to end, bounded memory).

use crate::error::{Result, WeirError};
use async_trait::async_trait;
use datafusion::arrow::record_batch::RecordBatch;
use std::collections::VecDeque;
use tokio::sync::mpsc;

/// What a stage-1 task sends a stage-2 task.
#[derive(Debug, Clone)]
pub enum Message {
    /// Rows (or partial aggregate states) for key partition `partition`, one the receiver
    /// owns.
    Data { partition: u32, batch: RecordBatch },
    /// The sender's watermark (epoch ms): it sends nothing older from now on.
    Watermark(i64),
    /// The sender is idle: leave it out of the minimum until it sends again.
    Idle,
    /// The sender has sent everything before checkpoint `epoch`.
    Barrier(u64),
    /// The sender has no more input.
    End,
    /// The sender asks to hear once the receiver has handled everything it sent before
    /// (in process only: how the driver waits for its stage-2 tasks before it reads their
    /// state, as for early results).
    Mark(u64),
}

/// A message and the input (stage-1 task) it came from.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub from: usize,
    pub message: Message,
}

/// The sending side of one stage-1 task.
#[async_trait]
pub trait ExchangeSender: Send {
    /// Send to stage-2 task `to`; waits while its input is full.
    async fn send(&mut self, to: usize, message: Message) -> Result<()>;
    /// The number of stage-2 tasks.
    fn receivers(&self) -> usize;
    /// Send to every stage-2 task (watermarks, barriers, the end).
    async fn send_all(&mut self, message: Message) -> Result<()> {
        for to in 0..self.receivers() {
            self.send(to, message.clone()).await?;
        }
        Ok(())
    }
}

/// The receiving side of one stage-2 task.
#[async_trait]
pub trait ExchangeReceiver: Send {
    /// The next message from any input; `None` once every sender is gone.
    async fn recv(&mut self) -> Option<Envelope>;
}

pub struct MemorySender {
    from: usize,
    to: Vec<mpsc::Sender<Envelope>>,
}

pub struct MemoryReceiver(mpsc::Receiver<Envelope>);

/// An in-memory exchange from `senders` stage-1 tasks to `receivers` stage-2 tasks, each
/// receiver buffering at most `capacity` messages.
pub fn in_memory(
    senders: usize,
    receivers: usize,
    capacity: usize,
) -> (Vec<MemorySender>, Vec<MemoryReceiver>) {
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..receivers)
        .map(|_| mpsc::channel(capacity.max(1)))
        .unzip();
    let senders = (0..senders)
        .map(|from| MemorySender {
            from,
            to: txs.clone(),
        })
        .collect();
    (senders, rxs.into_iter().map(MemoryReceiver).collect())
}

#[async_trait]
impl ExchangeSender for MemorySender {
    async fn send(&mut self, to: usize, message: Message) -> Result<()> {
        let tx = self.to.get(to).ok_or_else(|| {
            WeirError::Internal(format!(
                "exchange: no stage-2 task {to} of {}",
                self.to.len()
            ))
        })?;
        tx.send(Envelope {
            from: self.from,
            message,
        })
        .await
        .map_err(|_| WeirError::Internal(format!("exchange: stage-2 task {to} stopped")))
    }

    fn receivers(&self) -> usize {
        self.to.len()
    }
}

#[async_trait]
impl ExchangeReceiver for MemoryReceiver {
    async fn recv(&mut self) -> Option<Envelope> {
        self.0.recv().await
    }
}

/// What a stage-2 task does next, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Handle rows from input `from` for key partition `partition`.
    Data {
        from: usize,
        partition: u32,
        batch: RecordBatch,
    },
    /// The task's watermark moved to this (the minimum over inputs that are neither idle
    /// nor ended; it never moves back).
    Watermark(i64),
    /// Every input has passed the barrier of this epoch: snapshot now. Nothing sent after
    /// the barrier has been handed out yet.
    Checkpoint(u64),
    /// Every input has ended.
    End,
    /// Input `from` asks to hear once everything before this has been handled.
    Mark { from: usize, id: u64 },
}

#[derive(Debug, Clone, Copy)]
struct Input {
    watermark: i64,
    idle: bool,
    ended: bool,
    /// Delivered the barrier of the checkpoint being aligned.
    at_barrier: bool,
}

/// A stage-2 task's view of its inputs: the minimum watermark, barrier alignment (an input
/// that delivered the barrier is held back until all have, so a snapshot is a consistent
/// cut) and the end of input. Pure: messages in, steps out.
#[derive(Debug)]
pub struct Aligner {
    inputs: Vec<Input>,
    watermark: i64,
    /// The epoch being aligned.
    aligning: Option<u64>,
    /// Messages from inputs already at the barrier, in arrival order.
    held: VecDeque<Envelope>,
    ended: bool,
}

impl Aligner {
    pub fn new(inputs: usize) -> Self {
        Aligner {
            inputs: vec![
                Input {
                    watermark: i64::MIN,
                    idle: false,
                    ended: false,
                    at_barrier: false,
                };
                inputs
            ],
            watermark: i64::MIN,
            aligning: None,
            held: VecDeque::new(),
            ended: inputs == 0,
        }
    }

    /// The task's watermark (`i64::MIN` before the first).
    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    /// Each input's watermark (`i64::MIN` for one not heard from), to take up again with
    /// [`Aligner::resume`].
    pub fn input_watermarks(&self) -> Vec<i64> {
        self.inputs.iter().map(|i| i.watermark).collect()
    }

    /// Take up the inputs' watermarks from [`Aligner::input_watermarks`] of an aligner
    /// with as many inputs; the task's watermark is their least.
    pub fn resume(&mut self, watermarks: &[i64]) -> Result<()> {
        if watermarks.len() != self.inputs.len() {
            return Err(WeirError::Internal(format!(
                "exchange: resuming {} inputs' watermarks into an aligner of {}",
                watermarks.len(),
                self.inputs.len()
            )));
        }
        for (i, w) in self.inputs.iter_mut().zip(watermarks) {
            i.watermark = *w;
        }
        self.watermark = watermarks.iter().copied().min().unwrap_or(i64::MIN);
        Ok(())
    }

    /// Take one message; returns what to do, in order.
    pub fn push(&mut self, envelope: Envelope) -> Result<Vec<Step>> {
        let mut steps = Vec::new();
        self.take(envelope, &mut steps)?;
        Ok(steps)
    }

    fn take(&mut self, envelope: Envelope, steps: &mut Vec<Step>) -> Result<()> {
        let from = envelope.from;
        let n = self.inputs.len();
        let input = self
            .inputs
            .get_mut(from)
            .ok_or_else(|| WeirError::Internal(format!("exchange: no input {from} of {n}")))?;
        if input.at_barrier {
            self.held.push_back(envelope);
            return Ok(());
        }
        if input.ended {
            return Err(WeirError::Internal(format!(
                "exchange: input {from} sent {:?} after its end",
                envelope.message
            )));
        }
        match envelope.message {
            Message::Data { partition, batch } => {
                input.idle = false;
                steps.push(Step::Data {
                    from,
                    partition,
                    batch,
                });
            }
            Message::Mark(id) => steps.push(Step::Mark { from, id }),
            Message::Watermark(ms) => {
                input.idle = false;
                input.watermark = input.watermark.max(ms);
                self.advance(steps);
            }
            Message::Idle => {
                input.idle = true;
                self.advance(steps);
            }
            Message::End => {
                input.ended = true;
                self.advance(steps);
                self.try_checkpoint(steps)?;
                if !self.ended && self.inputs.iter().all(|i| i.ended) {
                    self.ended = true;
                    steps.push(Step::End);
                }
            }
            Message::Barrier(epoch) => {
                match self.aligning {
                    Some(e) if e != epoch => {
                        return Err(WeirError::Internal(format!(
                            "exchange: input {from} sent barrier {epoch} while {e} is aligning"
                        )));
                    }
                    _ => self.aligning = Some(epoch),
                }
                input.at_barrier = true;
                self.try_checkpoint(steps)?;
            }
        }
        Ok(())
    }

    /// Move the watermark to the minimum over inputs that count, never back.
    fn advance(&mut self, steps: &mut Vec<Step>) {
        let counted = self.inputs.iter().filter(|i| !i.idle && !i.ended);
        let min = if self.inputs.iter().all(|i| i.ended) {
            Some(i64::MAX)
        } else {
            counted.map(|i| i.watermark).min()
        };
        // Every input idle: nothing to go by, so the watermark stays.
        if let Some(min) = min
            && min > self.watermark
        {
            self.watermark = min;
            steps.push(Step::Watermark(min));
        }
    }

    /// When every input still running is at the barrier: checkpoint, release them, and
    /// hand out what they sent after it.
    fn try_checkpoint(&mut self, steps: &mut Vec<Step>) -> Result<()> {
        let Some(epoch) = self.aligning else {
            return Ok(());
        };
        if !self.inputs.iter().all(|i| i.at_barrier || i.ended) {
            return Ok(());
        }
        steps.push(Step::Checkpoint(epoch));
        self.aligning = None;
        for i in &mut self.inputs {
            i.at_barrier = false;
        }
        let held = std::mem::take(&mut self.held);
        for envelope in held {
            self.take(envelope, steps)?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use std::sync::Arc;
    use std::time::Duration;

    fn batch(v: i64) -> RecordBatch {
        RecordBatch::try_from_iter([("v", Arc::new(Int64Array::from(vec![v])) as _)]).unwrap()
    }

    fn env(from: usize, message: Message) -> Envelope {
        Envelope { from, message }
    }

    fn data(from: usize, v: i64) -> Step {
        Step::Data {
            from,
            partition: 0,
            batch: batch(v),
        }
    }

    fn msg(v: i64) -> Message {
        Message::Data {
            partition: 0,
            batch: batch(v),
        }
    }

    #[test]
    fn the_watermark_is_the_minimum_of_inputs_that_count_and_never_moves_back() {
        let mut a = Aligner::new(3);
        assert_eq!(a.push(env(0, Message::Watermark(10))).unwrap(), vec![]);
        assert_eq!(a.push(env(1, Message::Watermark(20))).unwrap(), vec![]);
        assert_eq!(
            a.push(env(2, Message::Watermark(5))).unwrap(),
            vec![Step::Watermark(5)]
        );
        // An idle input stops holding it back.
        assert_eq!(
            a.push(env(2, Message::Idle)).unwrap(),
            vec![Step::Watermark(10)]
        );
        // It comes back behind: the watermark stays (its rows behind it are late).
        assert_eq!(a.push(env(2, Message::Watermark(7))).unwrap(), vec![]);
        assert_eq!(a.watermark(), 10);
        assert_eq!(
            a.push(env(0, Message::Watermark(30))).unwrap(),
            vec![],
            "input 2 (at 7) still holds it"
        );
        assert_eq!(
            a.push(env(2, Message::Watermark(25))).unwrap(),
            vec![Step::Watermark(20)]
        );
        // Inputs going idle one by one: the minimum of the rest (25 once only input 2
        // counts), then, every input idle, nothing to go by.
        assert_eq!(a.push(env(0, Message::Idle)).unwrap(), vec![]);
        assert_eq!(
            a.push(env(1, Message::Idle)).unwrap(),
            vec![Step::Watermark(25)]
        );
        assert_eq!(a.push(env(2, Message::Idle)).unwrap(), vec![]);
        assert_eq!(a.watermark(), 25);
        // Data wakes an idle input.
        assert_eq!(a.push(env(1, msg(1))).unwrap(), vec![data(1, 1)]);
        assert_eq!(
            a.push(env(1, Message::Watermark(40))).unwrap(),
            vec![Step::Watermark(40)]
        );
    }

    #[test]
    fn the_end_comes_when_every_input_ended() {
        let mut a = Aligner::new(2);
        a.push(env(0, Message::Watermark(10))).unwrap();
        a.push(env(1, Message::Watermark(50))).unwrap();
        assert_eq!(
            a.push(env(0, Message::End)).unwrap(),
            vec![Step::Watermark(50)]
        );
        assert_eq!(
            a.push(env(1, Message::End)).unwrap(),
            vec![Step::Watermark(i64::MAX), Step::End]
        );
        assert!(a.push(env(1, msg(1))).is_err());
    }

    #[test]
    fn barriers_align_and_hold_back_what_came_after_them() {
        let mut a = Aligner::new(2);
        a.push(env(0, Message::Watermark(5))).unwrap();
        assert_eq!(a.push(env(0, Message::Barrier(1))).unwrap(), vec![]);
        // Input 0 is past the barrier: its next rows and watermark wait.
        assert_eq!(a.push(env(0, msg(2))).unwrap(), vec![]);
        assert_eq!(a.push(env(0, Message::Watermark(9))).unwrap(), vec![]);
        // Input 1 has not reached it: its rows belong before the checkpoint.
        assert_eq!(a.push(env(1, msg(1))).unwrap(), vec![data(1, 1)]);
        a.push(env(1, Message::Watermark(7))).unwrap();
        assert_eq!(a.watermark(), 5);
        assert_eq!(
            a.push(env(1, Message::Barrier(1))).unwrap(),
            vec![Step::Checkpoint(1), data(0, 2), Step::Watermark(7)]
        );
        // A held barrier of the next epoch aligns in turn.
        a.push(env(0, Message::Barrier(2))).unwrap();
        assert!(a.push(env(1, Message::Barrier(3))).is_err());
    }

    #[test]
    fn a_mark_comes_after_what_was_sent_before_it() {
        let mut a = Aligner::new(2);
        a.push(env(0, Message::Barrier(1))).unwrap();
        a.push(env(0, msg(2))).unwrap();
        // Held behind the barrier with the rows before it.
        assert_eq!(a.push(env(0, Message::Mark(7))).unwrap(), vec![]);
        assert_eq!(
            a.push(env(1, Message::Mark(8))).unwrap(),
            vec![Step::Mark { from: 1, id: 8 }]
        );
        assert_eq!(
            a.push(env(1, Message::Barrier(1))).unwrap(),
            vec![
                Step::Checkpoint(1),
                data(0, 2),
                Step::Mark { from: 0, id: 7 }
            ]
        );
    }

    #[test]
    fn an_ended_input_does_not_hold_a_checkpoint_back() {
        let mut a = Aligner::new(2);
        assert_eq!(a.push(env(1, Message::Barrier(4))).unwrap(), vec![]);
        assert_eq!(
            a.push(env(0, Message::End)).unwrap(),
            vec![Step::Checkpoint(4)]
        );
    }

    #[tokio::test]
    async fn memory_exchange_keeps_each_senders_order_and_pushes_back() {
        let (mut tx, mut rx) = in_memory(2, 2, 2);
        let mut t1 = tx.pop().unwrap();
        let mut t0 = tx.pop().unwrap();
        t0.send(1, msg(1)).await.unwrap();
        t0.send(1, msg(2)).await.unwrap();
        // Receiver 1 holds 2: a third send waits until it takes one.
        let blocked = tokio::time::timeout(Duration::from_millis(50), t1.send(1, msg(3))).await;
        assert!(
            blocked.is_err(),
            "a full receiver must make its senders wait"
        );
        let first = rx[1].recv().await.unwrap();
        t1.send(1, msg(3)).await.unwrap();
        let mut got = vec![first];
        got.push(rx[1].recv().await.unwrap());
        got.push(rx[1].recv().await.unwrap());
        let got: Vec<(usize, i64)> = got
            .into_iter()
            .map(|e| match e.message {
                Message::Data { batch: b, .. } => (
                    e.from,
                    b.column(0)
                        .as_any()
                        .downcast_ref::<Int64Array>()
                        .unwrap()
                        .value(0),
                ),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, vec![(0, 1), (0, 2), (1, 3)]);
        t0.send_all(Message::Watermark(9)).await.unwrap();
        for r in &mut rx {
            let e = r.recv().await.unwrap();
            assert_eq!(e.from, 0);
            assert!(matches!(e.message, Message::Watermark(9)), "{e:?}");
        }
        assert!(t0.send(2, Message::End).await.is_err());
        drop(rx);
        assert!(t1.send(0, Message::End).await.is_err());
    }
}
