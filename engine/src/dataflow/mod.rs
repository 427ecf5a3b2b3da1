//! The dataflow: a [`Graph`] of nodes (sources and views) whose operators implement one
//! [`Operator`] trait, and the synchronous loop that moves micro-batches and watermarks
//! through them. It never sleeps, spawns or does I/O: the runtime (`runtime.rs`) feeds it
//! from source tasks and carries out its [`Effect`]s, and the test runner steps it by hand.
//!
//! One step (a batch from a source partition, a tick of processing time, a partition's
//! end):
//!
//! 1. A batch is cut where rows earlier in it made a later row late (see
//!    `watermark.rs`), and each piece goes through steps 2 and 3 in turn.
//! 2. The source's node records the piece's event times; the piece goes to every node
//!    reading the source, and what they emit to the nodes reading them (breadth first, in
//!    node order).
//! 3. Watermarks advance: every node in topological order hears its inputs' watermarks
//!    (windows close, joins evict) and processing time (early results), and what it emits
//!    goes downstream before the next node advances, so a view over a view sees rows
//!    before the watermark that follows them.
//!
//! Every view's output is recorded as an [`Emission`] in order; the pipeline numbers them
//! (`sequencer.rs`), hands them to the serving layer and to sinks.
//!
//! Adding an operator kind: a file implementing [`Operator`] and one arm in
//! [`view_operator`].

pub mod count;
pub mod distinct;
pub mod exchange;
pub mod graph;
pub mod join;
pub mod keyed;
pub mod operator;
pub mod partition;
pub mod prepare;
pub mod source;
pub mod stage2;
pub mod stateless;
pub mod updating;
pub mod windowed;

use crate::cluster::ClusterView;
use crate::connector::RowIds;
use crate::error::{Result, WeirError};
use crate::object::ObjectKind;
use crate::planner::{ViewPlan, ViewPlanKind};
use crate::stats::Stats;
use crate::watermark::TimeReport;
use crate::window::shifted_ms;
use datafusion::arrow::record_batch::RecordBatch;
pub use graph::{Graph, NodeId};
use keyed::Keying;
pub use operator::{Context, Effect, LateRows, NodeState, Operator, StateFigures};
use prepare::{Prepared, Stage1Out, Stage1Program};
use source::SourceOp;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

/// One batch a view emitted, in emission order.
#[derive(Debug, Clone)]
pub struct Emission {
    pub view: String,
    pub batch: RecordBatch,
    /// Where its rows came from, for row ids: a source partition, or [`RowIds::CLOSES`].
    pub origin: u32,
    /// The view's watermark when it emitted (`None` before the first).
    pub watermark: Option<i64>,
}

enum NodeOp {
    Source(SourceOp),
    View(Box<dyn Operator>),
}

impl NodeOp {
    fn operator(&mut self) -> &mut dyn Operator {
        match self {
            NodeOp::Source(s) => s,
            NodeOp::View(v) => v.as_mut(),
        }
    }
}

struct Node {
    name: String,
    kind: ObjectKind,
    op: NodeOp,
    stats: Arc<Stats>,
    /// Views: no state, rows pass straight through (lateness looks through them).
    stateless: bool,
    /// The input columns whose values decide whether a row is late for the view: a
    /// windowed view's window time column, a count window's time column, a time-bounded
    /// outer join's band columns.
    time_columns: Vec<String>,
}

/// The operator for a planned view: the one registration point for operator kinds.
pub fn view_operator(plan: ViewPlan, keying: Keying, now_ms: i64) -> Result<Box<dyn Operator>> {
    Ok(match plan.kind {
        ViewPlanKind::Stateless { plan } => Box::new(stateless::StatelessOp::new(plan)),
        ViewPlanKind::Union { plan, slots } => Box::new(stateless::StatelessOp::union(plan, slots)),
        ViewPlanKind::Windowed {
            pre,
            aggregate,
            post,
        } => Box::new(windowed::WindowedOp::new(
            pre,
            aggregate,
            post,
            plan.output_schema,
            plan.props.late_policy,
            keying,
            now_ms,
        )?),
        ViewPlanKind::Join { sides, join, post } => {
            Box::new(join::JoinOp::new(sides, join, post, keying)?)
        }
        ViewPlanKind::CountWindow {
            plan,
            input_schema,
            key,
            time,
            rows,
        } => Box::new(count::CountWindowOp::try_new(
            plan,
            input_schema,
            key,
            time,
            rows,
        )?),
        ViewPlanKind::Distinct {
            pre,
            keys,
            key_schema,
            post,
        } => Box::new(distinct::DistinctOp::try_new(pre, keys, key_schema, post)?),
        ViewPlanKind::Updating {
            pre,
            aggregate,
            post,
        } => Box::new(updating::UpdatingOp::new(
            pre,
            aggregate,
            post,
            &plan.output_schema,
            plan.props.emit_every,
            now_ms,
        )),
    })
}

/// The origin (for row ids) of rows a view emits from a batch with origin `origin` that
/// reached it on input `port`: the same on the first input, and told apart on the others,
/// so that a union's or a join's rows from partition 0 of two inputs are numbered apart
/// (each origin's rows must come in an order a replay repeats). Partitions below 2^16
/// and up to 128 ports stay distinct, and [`RowIds::CLOSES`] stays distinct from them.
fn origin_at_port(origin: u32, port: usize) -> u32 {
    if port == 0 {
        return origin;
    }
    (origin ^ (((port as u32) & 0x7f) << 16)) & RowIds::CLOSES
}

/// Sources, views and what flows between them.
#[derive(Default)]
pub struct Dataflow {
    graph: Graph,
    nodes: BTreeMap<NodeId, Node>,
    emissions: Vec<Emission>,
    effects: Vec<Effect>,
    /// Per source: the columns whose values decide lateness downstream (see
    /// [`Dataflow::probe_columns`]); recomputed when the graph changes.
    probes: BTreeMap<NodeId, Vec<usize>>,
    /// Moves on whenever a node is added or removed: stage-1 programs built before are
    /// stale (see `prepare.rs`).
    generation: u64,
    /// Batches taken as stage 1 prepared them, and prepared too early to use.
    prepared: (u64, u64),
}

fn graph_error(e: graph::GraphError) -> WeirError {
    WeirError::Internal(format!("dataflow graph: {e:?}"))
}

impl Dataflow {
    pub fn add_source(&mut self, name: &str, op: SourceOp, stats: Arc<Stats>) -> Result<NodeId> {
        let id = self.graph.add(name, &[]).map_err(graph_error)?;
        stats.watermark.store(op.clock.watermark(), Relaxed);
        self.nodes.insert(
            id,
            Node {
                name: name.to_string(),
                kind: ObjectKind::Source,
                op: NodeOp::Source(op),
                stats,
                stateless: false,
                time_columns: vec![],
            },
        );
        self.graph_changed();
        Ok(id)
    }

    /// Add a planned view reading `plan.inputs`, at processing time `now_ms`.
    pub fn add_view(
        &mut self,
        name: &str,
        plan: ViewPlan,
        stats: Arc<Stats>,
        keying: Keying,
        now_ms: i64,
    ) -> Result<NodeId> {
        let inputs = plan
            .inputs
            .iter()
            .map(|i| {
                self.graph
                    .id(i)
                    .ok_or_else(|| WeirError::Internal(format!("view input '{i}' has no node")))
            })
            .collect::<Result<Vec<_>>>()?;
        let stateless = matches!(
            plan.kind,
            ViewPlanKind::Stateless { .. } | ViewPlanKind::Union { .. }
        );
        let mut time_columns: Vec<String> = plan.props.window_time_column.iter().cloned().collect();
        time_columns.extend(plan.kind.lateness_columns());
        let op = view_operator(plan, keying, now_ms)?;
        let id = self.graph.add(name, &inputs).map_err(graph_error)?;
        self.nodes.insert(
            id,
            Node {
                name: name.to_string(),
                kind: ObjectKind::View,
                op: NodeOp::View(op),
                stats,
                stateless,
                time_columns,
            },
        );
        self.graph_changed();
        Ok(id)
    }

    /// Remove a node that nothing reads.
    pub fn remove(&mut self, name: &str) -> Result<()> {
        let Some(id) = self.graph.id(name) else {
            return Ok(());
        };
        self.graph.remove(id).map_err(graph_error)?;
        self.nodes.remove(&id);
        self.graph_changed();
        Ok(())
    }

    /// Every node's name, in topological order.
    pub fn names(&self) -> Vec<String> {
        self.nodes.values().map(|n| n.name.clone()).collect()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.graph.id(name).is_some()
    }

    /// A node's watermark (`i64::MIN` if it has none or does not exist).
    pub fn watermark_of(&mut self, name: &str) -> i64 {
        match self.graph.id(name) {
            Some(id) => self.watermark(id),
            None => i64::MIN,
        }
    }

    fn watermark(&mut self, id: NodeId) -> i64 {
        self.nodes
            .get_mut(&id)
            .map_or(i64::MIN, |n| n.op.operator().watermark())
    }

    /// True when every source has ended.
    pub fn all_sources_ended(&self) -> bool {
        self.nodes.values().all(|n| match &n.op {
            NodeOp::Source(s) => s.clock.watermark() == i64::MAX,
            NodeOp::View(_) => true,
        })
    }

    fn source_mut(&mut self, name: &str) -> Result<(NodeId, &mut SourceOp)> {
        let id = self
            .graph
            .id(name)
            .ok_or_else(|| WeirError::user(format!("there is no source '{name}'")))?;
        match self.nodes.get_mut(&id).map(|n| &mut n.op) {
            Some(NodeOp::Source(s)) => Ok((id, s)),
            _ => Err(WeirError::user(format!("'{name}' is not a source"))),
        }
    }

    /// What was emitted since the last call, in order.
    pub fn take_emissions(&mut self) -> Vec<Emission> {
        std::mem::take(&mut self.emissions)
    }

    /// Side effects asked for since the last call.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// The runtime starts at `now`: idle timeouts run from here.
    pub fn start(&mut self, now: i64) {
        for n in self.nodes.values_mut() {
            if let NodeOp::Source(s) = &mut n.op {
                s.clock.start(now);
            }
        }
    }

    /// The columns of a source whose values decide whether a row is late for some view:
    /// the window time column of every windowed view that reads the source directly or
    /// through stateless views, when the source has a column of that name (else its
    /// event-time column). Empty when no windowed view reads it.
    fn probe_columns(&self, source: NodeId) -> Vec<usize> {
        let Some(Node {
            op: NodeOp::Source(s),
            ..
        }) = self.nodes.get(&source)
        else {
            return vec![];
        };
        let crate::watermark::EventTime::Column { index: event, .. } = s.clock.event_time else {
            return vec![];
        };
        let mut out = Vec::new();
        let mut queue: VecDeque<NodeId> = VecDeque::from([source]);
        while let Some(id) = queue.pop_front() {
            for e in self.graph.consumers(id) {
                let Some(n) = self.nodes.get(&e.to) else {
                    continue;
                };
                if n.stateless {
                    queue.push_back(e.to);
                }
                for col in &n.time_columns {
                    let i = match s.schema.index_of(col) {
                        Ok(i)
                            if matches!(
                                s.schema.field(i).data_type(),
                                datafusion::arrow::datatypes::DataType::Timestamp(_, _)
                            ) =>
                        {
                            i
                        }
                        // A column the view computed or renamed: judge by event time.
                        _ => event,
                    };
                    if !out.contains(&i) {
                        out.push(i);
                    }
                }
            }
        }
        out.sort_unstable();
        out
    }

    /// A node was added or removed: stage-1 programs built before are stale, and the
    /// columns deciding lateness are recomputed.
    fn graph_changed(&mut self) {
        self.generation += 1;
        let sources: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.kind == ObjectKind::Source)
            .map(|(id, _)| *id)
            .collect();
        self.probes = sources
            .into_iter()
            .map(|id| (id, self.probe_columns(id)))
            .collect();
    }

    /// One micro-batch from a source partition, at processing time `now`; `position` is
    /// where the partition resumes after it (recorded for checkpoints). `prepared`: what
    /// stage 1 made of it (`prepare.rs`), used when its program is of the current
    /// generation (else the batch is run the ordinary way). The batch is delivered in the
    /// pieces its cuts give: per piece, the source records its event times, the views take
    /// it (or their prepared output), and watermarks advance.
    pub async fn push(
        &mut self,
        source: &str,
        partition: usize,
        batch: RecordBatch,
        prepared: Option<Prepared>,
        position: Option<i64>,
        now: i64,
    ) -> Result<()> {
        let prepared = match prepared {
            Some(p) if p.generation == self.generation => {
                self.prepared.0 += 1;
                Some(p)
            }
            Some(_) => {
                self.prepared.1 += 1;
                None
            }
            None => None,
        };
        let (id, s) = self.source_mut(source)?;
        if partition >= s.clock.partitions.len() {
            return Err(WeirError::Internal(format!(
                "source '{source}' sent partition {partition} of {}",
                s.clock.partitions.len()
            )));
        }
        let (times, cuts, pieces) = match prepared {
            Some(Prepared {
                times,
                cuts,
                pieces,
                ..
            }) => (times, cuts, Some(pieces)),
            None => {
                let times = s.event_times(&batch)?;
                let cuts = match (&times, s.clock.event_time) {
                    (Some(t), crate::watermark::EventTime::Column { index, delay_ms }) => {
                        let probes = self.probes.get(&id).map_or(&[][..], |p| p.as_slice());
                        prepare::batch_cuts(&batch, t, index, delay_ms, probes)?
                    }
                    _ => vec![],
                };
                (times, cuts, None)
            }
        };
        let origin = (partition as u32).min(RowIds::CLOSES - 1);
        let mut pieces = pieces.map(|p| p.into_iter());
        let mut start = 0;
        for end in cuts.into_iter().chain([batch.num_rows()]) {
            let piece = batch.slice(start, end - start);
            let piece_times = times.as_ref().map(|t| t.slice(start, end - start));
            let mut outputs = pieces.as_mut().and_then(|p| p.next());
            let (_, s) = self.source_mut(source)?;
            s.observe(partition, piece_times.as_ref(), now);
            if piece.num_rows() > 0 {
                self.deliver(id, piece, origin, now, outputs.as_mut())
                    .await?;
            }
            self.advance(now).await?;
            start = end;
        }
        if position.is_some() {
            let (_, s) = self.source_mut(source)?;
            if let Some(p) = s.clock.partitions.get_mut(partition) {
                p.position = position;
            }
        }
        Ok(())
    }

    /// The stage-1 work for `source`'s batches (`prepare.rs`): `None` when no view reading
    /// it can be prepared ahead of the driver.
    pub fn stage1_program(&self, source: &str) -> Option<Stage1Program> {
        let id = self.graph.id(source)?;
        let Some(Node {
            op: NodeOp::Source(s),
            ..
        }) = self.nodes.get(&id)
        else {
            return None;
        };
        let event = match s.clock.event_time {
            crate::watermark::EventTime::Column { index, delay_ms } => Some((index, delay_ms)),
            _ => None,
        };
        let mut steps = Vec::new();
        // Breadth first from the source, through views with one input that stage 1 runs
        // whole (stateless ones); a view that stage 1 folds (an aggregate) ends its path.
        let mut queue: VecDeque<NodeId> = VecDeque::from([id]);
        while let Some(from) = queue.pop_front() {
            for e in self.graph.consumers(from) {
                let Some(n) = self.nodes.get(&e.to) else {
                    continue;
                };
                if self.graph.inputs(e.to).len() != 1 || steps.iter().any(|(v, _, _)| *v == e.to) {
                    continue;
                }
                let NodeOp::View(op) = &n.op else {
                    continue;
                };
                let Some(step) = op.stage1() else {
                    continue;
                };
                if matches!(step, prepare::Stage1Step::Stateless(_)) {
                    queue.push_back(e.to);
                }
                steps.push((e.to, from, step));
            }
        }
        if steps.is_empty() {
            return None;
        }
        Some(Stage1Program {
            generation: self.generation,
            event,
            probes: self.probes.get(&id).cloned().unwrap_or_default(),
            steps,
            source: id,
        })
    }

    /// `view` as a cluster runs it (`cluster.rs`), its state cut into `key_partitions`;
    /// a user error says why a view cannot run in a cluster yet.
    pub fn cluster_view(&self, view: &str, key_partitions: u32) -> Result<ClusterView> {
        let refuse = |why: &str| WeirError::user(format!("view '{view}': {why}"));
        let id = self
            .graph
            .id(view)
            .ok_or_else(|| WeirError::user(format!("there is no view '{view}'")))?;
        let Some(Node {
            op: NodeOp::View(op),
            ..
        }) = self.nodes.get(&id)
        else {
            return Err(WeirError::user(format!("'{view}' is not a view")));
        };
        let parts = op.cluster().map_err(|why| refuse(&why))?;
        let inputs = self.graph.inputs(id);
        let source = match inputs {
            [one] => match self.nodes.get(one) {
                Some(Node {
                    op: NodeOp::Source(s),
                    name,
                    ..
                }) => Some((name.clone(), s)),
                _ => None,
            },
            _ => None,
        };
        let Some((source, s)) = source else {
            return Err(refuse(
                "a view in a cluster must read one source directly (views over views \
                 cannot run in a cluster yet)",
            ));
        };
        let crate::watermark::EventTime::Column { index, delay_ms } = s.clock.event_time else {
            return Err(refuse(&format!(
                "its source '{source}' needs an event-time column (WATERMARK FOR ...) to \
                 run in a cluster"
            )));
        };
        Ok(ClusterView {
            view: view.to_string(),
            source,
            key_partitions: key_partitions.max(1),
            schema: parts.schema,
            event: (index, delay_ms),
            pre: parts.pre,
            empty: parking_lot::Mutex::new(parts.aggregate),
            post: parts.post,
        })
    }

    /// How a view's work is shared out (for DESCRIBE): what stage 1 does for it on the
    /// workers, or that it runs on the driver only, and how its state is split.
    pub fn parallelism(&self, view: &str) -> Option<String> {
        let id = self.graph.id(view)?;
        let Some(Node {
            op: NodeOp::View(op),
            ..
        }) = self.nodes.get(&id)
        else {
            return None;
        };
        let sources = self
            .nodes
            .iter()
            .filter(|(_, n)| n.kind == ObjectKind::Source)
            .map(|(_, n)| n.name.clone());
        let partitioning = op.partitioning();
        let mut stage1 = if partitioning.is_some() {
            "no stage 1: every row is handled in stage 2"
        } else {
            "driver only"
        };
        for source in sources {
            let Some(program) = self.stage1_program(&source) else {
                continue;
            };
            if let Some((_, _, step)) = program.steps.iter().find(|(v, _, _)| *v == id) {
                stage1 = match step {
                    prepare::Stage1Step::Stateless(_) => "stage 1 on any worker: the whole plan",
                    prepare::Stage1Step::Aggregate { .. } => {
                        "stage 1 on any worker: pre plan and partial aggregates per pane; \
                         stage 2: merge and close windows"
                    }
                };
                break;
            }
        }
        Some(match partitioning {
            Some(p) => format!("{stage1}; {p}"),
            None => stage1.to_string(),
        })
    }

    /// Batches merged as stage 1 prepared them, and batches prepared for views that have
    /// changed since (run the ordinary way).
    pub fn prepared_batches(&self) -> (u64, u64) {
        self.prepared
    }

    /// The source knows it has `count` partitions.
    pub fn set_partitions(&mut self, source: &str, count: usize, now: i64) -> Result<()> {
        self.source_mut(source)?.1.clock.set_partitions(count, now);
        Ok(())
    }

    /// A partition is alive though quiet.
    pub fn keep_active(&mut self, source: &str, partition: usize, now: i64) -> Result<()> {
        self.source_mut(source)?.1.clock.keep_active(partition, now);
        Ok(())
    }

    /// A connector's word on a partition's event time (see [`TimeReport`]).
    pub async fn report_time(
        &mut self,
        source: &str,
        partition: usize,
        report: TimeReport,
        event_time_ms: i64,
        now: i64,
    ) -> Result<()> {
        let clock = &mut self.source_mut(source)?.1.clock;
        clock.report(partition, report, event_time_ms, now);
        self.advance(now).await
    }

    pub async fn end_partition(&mut self, source: &str, partition: usize, now: i64) -> Result<()> {
        self.source_mut(source)?.1.clock.end_partition(partition);
        self.advance(now).await
    }

    pub async fn end_source(&mut self, source: &str, now: i64) -> Result<()> {
        self.source_mut(source)?.1.clock.end_all();
        self.advance(now).await
    }

    /// Processing time moved on: partitions may have gone idle, early results be due.
    pub async fn tick(&mut self, now: i64) -> Result<()> {
        self.advance(now).await
    }

    /// Hand a batch from node `from` to every node reading it, and onward, breadth first.
    /// `prepared`: what stage 1 made of it for some of those nodes (each is called once,
    /// with its prepared output, however many batches its input emits).
    async fn deliver(
        &mut self,
        from: NodeId,
        batch: RecordBatch,
        origin: u32,
        now: i64,
        mut prepared: Option<&mut BTreeMap<NodeId, Stage1Out>>,
    ) -> Result<()> {
        let covered: Vec<NodeId> = prepared
            .as_ref()
            .map(|p| p.keys().copied().collect())
            .unwrap_or_default();
        let mut queue: VecDeque<(NodeId, RecordBatch, u32)> =
            VecDeque::from([(from, batch, origin)]);
        while let Some((from, batch, origin)) = queue.pop_front() {
            for edge in self.graph.consumers(from) {
                let origin = origin_at_port(origin, edge.port);
                let Some(node) = self.nodes.get_mut(&edge.to) else {
                    continue;
                };
                Stats::add(&node.stats.rows_in, batch.num_rows() as u64);
                let ready = prepared.as_mut().and_then(|p| p.remove(&edge.to));
                if ready.is_none() && covered.contains(&edge.to) {
                    // Its prepared output was taken with an earlier batch of this piece.
                    continue;
                }
                let mut cx = Context {
                    name: &node.name,
                    now_ms: now,
                    stats: &node.stats,
                    effects: &mut self.effects,
                };
                let out = match ready {
                    Some(ready) => node.op.operator().on_prepared(ready, &mut cx).await?,
                    None => {
                        node.op
                            .operator()
                            .on_batch(edge.port, batch.clone(), &mut cx)
                            .await?
                    }
                };
                let watermark = node.op.operator().watermark();
                publish_figures(node);
                for b in out.into_iter().filter(|b| b.num_rows() > 0) {
                    Stats::add(&node.stats.rows_out, b.num_rows() as u64);
                    self.emissions.push(Emission {
                        view: node.name.clone(),
                        batch: b.clone(),
                        origin,
                        watermark: (watermark != i64::MIN).then_some(watermark),
                    });
                    queue.push_back((edge.to, b, origin));
                }
            }
        }
        Ok(())
    }

    /// Advance every node's watermark in topological order (see the module docs).
    async fn advance(&mut self, now: i64) -> Result<()> {
        for id in self.graph.order() {
            let inputs: Vec<i64> = self
                .graph
                .inputs(id)
                .to_vec()
                .into_iter()
                .map(|i| self.watermark(i))
                .collect();
            let Some(node) = self.nodes.get_mut(&id) else {
                continue;
            };
            let mut cx = Context {
                name: &node.name,
                now_ms: now,
                stats: &node.stats,
                effects: &mut self.effects,
            };
            let op = node.op.operator();
            let mut out = op.on_watermark(&inputs, &mut cx).await?;
            out.extend(op.on_tick(&mut cx).await?);
            let watermark = op.watermark();
            node.stats.watermark.store(watermark, Relaxed);
            publish_figures(node);
            let out: Vec<RecordBatch> = out.into_iter().filter(|b| b.num_rows() > 0).collect();
            for b in &out {
                Stats::add(&node.stats.rows_out, b.num_rows() as u64);
                self.emissions.push(Emission {
                    view: node.name.clone(),
                    batch: b.clone(),
                    origin: RowIds::CLOSES,
                    watermark: (watermark != i64::MIN).then_some(watermark),
                });
            }
            for b in out {
                self.deliver(id, b, RowIds::CLOSES, now, None).await?;
            }
        }
        Ok(())
    }

    /// Every node's state, in topological order: `(name, kind, state, figures)`.
    pub async fn snapshot(&mut self) -> Result<Vec<(String, ObjectKind, NodeState)>> {
        let mut out = Vec::with_capacity(self.nodes.len());
        for node in self.nodes.values_mut() {
            let state = node.op.operator().snapshot().await?;
            out.push((node.name.clone(), node.kind, state));
        }
        Ok(out)
    }

    /// Put back one node's state.
    pub fn restore_node(&mut self, name: &str, state: NodeState) -> Result<()> {
        let id = self
            .graph
            .id(name)
            .ok_or_else(|| WeirError::Internal(format!("no node '{name}' to restore")))?;
        let node = self
            .nodes
            .get_mut(&id)
            .ok_or_else(|| WeirError::Internal(format!("no node '{name}' to restore")))?;
        let op = node.op.operator();
        {
            let _span = tracing::info_span!("restore", node = name).entered();
            op.restore(state)?;
        }
        node.stats.watermark.store(op.watermark(), Relaxed);
        publish_figures(node);
        Ok(())
    }

    /// A node's state figures.
    pub fn figures(&mut self, name: &str) -> StateFigures {
        match self.graph.id(name).and_then(|id| self.nodes.get_mut(&id)) {
            Some(n) => n.op.operator().figures(),
            None => StateFigures::default(),
        }
    }
}

fn publish_figures(node: &mut Node) {
    if node.kind != ObjectKind::View {
        return;
    }
    let f = node.op.operator().figures();
    node.stats.open_windows.store(f.open_windows, Relaxed);
    node.stats.open_groups.store(f.open_groups, Relaxed);
    node.stats.state_bytes.store(f.bytes, Relaxed);
    node.stats.key_partitions.store(f.key_partitions, Relaxed);
    node.stats
        .busiest_partition_groups
        .store(f.busiest_partition_groups, Relaxed);
    node.stats
        .busiest_partition_share
        .store(f.busiest_partition_share, Relaxed);
}

/// Each row's least value over the timestamp columns `columns` (epoch ms).
pub(crate) fn min_times(batch: &RecordBatch, columns: &[usize]) -> Result<Vec<Option<i64>>> {
    let mut out: Vec<Option<i64>> = vec![None; batch.num_rows()];
    for &c in columns {
        for (o, t) in out.iter_mut().zip(shifted_ms(batch.column(c), 0)?) {
            if let Some(t) = t {
                *o = Some(o.map_or(t, |x| x.min(t)));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows from the same partition number of different inputs, and windows' rows through
    /// any input, never share an origin, and the first input keeps the source's numbering.
    #[test]
    fn origins_differ_per_input_port() {
        let mut seen = std::collections::HashSet::new();
        for port in 0..8 {
            for origin in (0..2_000).chain([RowIds::CLOSES]) {
                let o = origin_at_port(origin, port);
                assert!(o <= RowIds::CLOSES);
                assert!(seen.insert(o), "origin {origin} on port {port} collides");
                if port == 0 {
                    assert_eq!(o, origin);
                }
            }
        }
    }
}
