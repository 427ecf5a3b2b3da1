//! Filtered subscriptions ("rooms"): a subscriber that follows some values of a view's
//! key columns (`?key.symbol=AAPL&key.symbol=MSFT`) gets only the rows that carry them.
//!
//! Filtering must not cost every subscriber every row. One router per view (a task,
//! alive while the view has filtered subscribers) reads the view's emissions once and
//! looks each row's value up in an index of the subscribers' filters: the cost of a batch
//! is one hash lookup per row and indexed column, plus the matching rows. Subscribers
//! with the same filter form a group that shares one encoded message, so a thousand
//! clients following AAPL cost one encoding and a thousand queue pushes, not a thousand
//! scans of the batch.
//!
//! A filter is a set of columns, each with the values it accepts: a row matches when every
//! column's value is one of its values (AND across columns, OR within one). The router
//! indexes a group by its filter's first column and checks the others on the rows found.

use super::messages::filtered_live;
use axum::extract::ws::Utf8Bytes;
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use parking_lot::Mutex;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use weir_engine::serving::{Emitted, SUBSCRIBER_QUEUE_BATCHES, ViewBuffer, ViewEvent};

/// At most this many values in one subscription's filter, over all its columns.
pub const MAX_FILTER_VALUES: usize = 1024;

/// A value of a key column, as a filter holds it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyValue {
    Bool(bool),
    Int(i128),
    Str(Box<str>),
}

/// A row's value of a key column, borrowed from the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum KeyRef<'a> {
    Bool(bool),
    Int(i128),
    Str(&'a str),
}

impl KeyValue {
    fn as_ref(&self) -> KeyRef<'_> {
        match self {
            KeyValue::Bool(b) => KeyRef::Bool(*b),
            KeyValue::Int(i) => KeyRef::Int(*i),
            KeyValue::Str(s) => KeyRef::Str(s),
        }
    }

    /// `text` as a value of a column of type `t`.
    fn parse(t: &DataType, text: &str) -> Result<KeyValue, String> {
        let bad = |what: &str| format!("'{text}' is not {what}");
        Ok(match t {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => KeyValue::Str(text.into()),
            DataType::Boolean => match text {
                "true" => KeyValue::Bool(true),
                "false" => KeyValue::Bool(false),
                _ => return Err(bad("true or false")),
            },
            t if t.is_integer() => KeyValue::Int(text.parse().map_err(|_| bad("an integer"))?),
            t => return Err(format!("a {t} column cannot be a filter key")),
        })
    }
}

/// Whether a column of type `t` can be filtered on.
fn filterable(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Boolean
    ) || t.is_integer()
}

/// Row `i`'s value of `col` (`None` for a null or a type filters do not take).
fn key_at(col: &dyn Array, i: usize) -> Option<KeyRef<'_>> {
    if col.is_null(i) {
        return None;
    }
    use datafusion::arrow::datatypes as t;
    Some(match col.data_type() {
        DataType::Utf8 => KeyRef::Str(col.as_string::<i32>().value(i)),
        DataType::LargeUtf8 => KeyRef::Str(col.as_string::<i64>().value(i)),
        DataType::Utf8View => KeyRef::Str(col.as_string_view().value(i)),
        DataType::Boolean => KeyRef::Bool(col.as_boolean().value(i)),
        DataType::Int8 => KeyRef::Int(col.as_primitive::<t::Int8Type>().value(i).into()),
        DataType::Int16 => KeyRef::Int(col.as_primitive::<t::Int16Type>().value(i).into()),
        DataType::Int32 => KeyRef::Int(col.as_primitive::<t::Int32Type>().value(i).into()),
        DataType::Int64 => KeyRef::Int(col.as_primitive::<t::Int64Type>().value(i).into()),
        DataType::UInt8 => KeyRef::Int(col.as_primitive::<t::UInt8Type>().value(i).into()),
        DataType::UInt16 => KeyRef::Int(col.as_primitive::<t::UInt16Type>().value(i).into()),
        DataType::UInt32 => KeyRef::Int(col.as_primitive::<t::UInt32Type>().value(i).into()),
        DataType::UInt64 => KeyRef::Int(col.as_primitive::<t::UInt64Type>().value(i).into()),
        _ => return None,
    })
}

/// A subscription's filter: per column (by index in the view's schema, ascending), the
/// values it accepts (sorted, no repeats). Equal filters are equal values, so their
/// subscribers share a group.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Filter {
    cols: Vec<(usize, Vec<KeyValue>)>,
}

impl Filter {
    /// The filter of `(column, values)` over a view with `schema`. An updating view
    /// (`key` its key columns) may only be filtered on its key: a row changing another
    /// column's value would otherwise leave a subscriber with a stale row.
    pub fn new(
        schema: &SchemaRef,
        key: Option<&[usize]>,
        wanted: &[(String, Vec<String>)],
    ) -> Result<Filter, String> {
        let mut cols: Vec<(usize, BTreeSet<KeyValue>)> = Vec::new();
        let mut count = 0;
        for (name, values) in wanted {
            let (i, field) = schema
                .column_with_name(name)
                .ok_or_else(|| format!("the view has no column '{name}' to filter on"))?;
            if let Some(key) = key
                && !key.contains(&i)
            {
                let names: Vec<&str> = key
                    .iter()
                    .map(|k| schema.field(*k).name().as_str())
                    .collect();
                return Err(format!(
                    "'{name}' is not a key column of this updating view; filter on its key ({})",
                    names.join(", ")
                ));
            }
            if !filterable(field.data_type()) {
                return Err(format!(
                    "'{name}' is a {} column; filters take text, integer and boolean columns",
                    super::json::type_name(field.data_type())
                ));
            }
            let parsed = values
                .iter()
                .map(|v| KeyValue::parse(field.data_type(), v).map_err(|e| format!("{name}: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            count += parsed.len();
            if count > MAX_FILTER_VALUES {
                return Err(format!(
                    "a filter takes at most {MAX_FILTER_VALUES} values; subscribe more than once"
                ));
            }
            match cols.iter_mut().find(|(c, _)| *c == i) {
                Some((_, set)) => set.extend(parsed),
                None => cols.push((i, parsed.into_iter().collect())),
            }
        }
        if cols.is_empty() {
            return Err("a filter needs at least one column".into());
        }
        cols.sort_by_key(|(c, _)| *c);
        Ok(Filter {
            cols: cols
                .into_iter()
                .map(|(c, set)| (c, set.into_iter().collect()))
                .collect(),
        })
    }

    /// Whether row `i` of `batch` (the view's columns first) has an accepted value in
    /// every column from the `skip`th on.
    fn matches_from(&self, batch: &RecordBatch, i: usize, skip: usize) -> bool {
        self.cols[skip..].iter().all(|(c, values)| {
            key_at(batch.column(*c).as_ref(), i)
                .is_some_and(|k| values.binary_search_by(|v| v.as_ref().cmp(&k)).is_ok())
        })
    }

    /// The rows of `batch` that match, in order.
    pub fn select(&self, batch: &RecordBatch) -> Vec<u32> {
        (0..batch.num_rows())
            .filter(|&i| self.matches_from(batch, i, 0))
            .map(|i| i as u32)
            .collect()
    }
}

/// A group's share of an emitted batch: the matching rows and their encoded message.
#[derive(Debug)]
pub struct Routed {
    pub emitted: Arc<Emitted>,
    /// Indices into `emitted.batch`, ascending.
    pub rows: Vec<u32>,
    /// The `rows` message of exactly those rows.
    pub msg: Utf8Bytes,
}

/// Why the router stopped feeding a subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Its queue was full: it is too slow (it may resume with since_seq).
    Lagged,
    /// The view was dropped.
    Dropped,
    /// The router itself fell behind the view (it may resume with since_seq).
    RouterLagged,
    /// Encoding a message failed (logged).
    Failed,
}

/// The filtered subscriptions of every view.
#[derive(Debug, Default, Clone)]
pub struct Rooms {
    routers: Arc<Mutex<HashMap<String, Arc<Router>>>>,
}

/// What one filtered subscriber holds: its queue of messages; leaves its group on drop.
pub struct Membership {
    router: Arc<Router>,
    id: u64,
    group: u64,
    pub rx: mpsc::Receiver<Arc<Routed>>,
    ended: Arc<Mutex<Option<Ended>>>,
}

impl Membership {
    /// Why the queue was closed (once `rx` yields `None`).
    pub fn ended(&self) -> Ended {
        self.ended.lock().unwrap_or(Ended::Dropped)
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.router.leave(self.group, self.id);
    }
}

impl Rooms {
    /// Join `view`'s filtered subscriptions with `filter`. Call before reading the
    /// view's retained rows: every batch emitted after this is routed to the member (the
    /// ones before may come twice; skip them by seq).
    pub fn join(&self, view: &str, buffer: &Arc<ViewBuffer>, filter: Filter) -> Membership {
        let mut routers = self.routers.lock();
        let router = match routers.get(view) {
            Some(r) if Arc::ptr_eq(&r.buffer, buffer) => r.clone(),
            _ => {
                // None yet, or one of a dropped view of the same name (it ends itself).
                let router = Arc::new(Router {
                    view: view.to_string(),
                    buffer: buffer.clone(),
                    rooms: self.clone(),
                    inner: Mutex::new(Index::default()),
                    stop: tokio::sync::Notify::new(),
                });
                let rx = buffer.subscribe();
                tokio::spawn(router.clone().run(rx));
                routers.insert(view.to_string(), router.clone());
                router
            }
        };
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE_BATCHES);
        let ended = Arc::new(Mutex::new(None));
        let (group, id) = router.inner.lock().add(filter, tx, ended.clone());
        drop(routers);
        Membership {
            router,
            id,
            group,
            rx,
            ended,
        }
    }

    /// How many views have a router running (for tests and figures).
    pub fn routers(&self) -> usize {
        self.routers.lock().len()
    }
}

/// One member of a group.
#[derive(Debug)]
struct Member {
    tx: mpsc::Sender<Arc<Routed>>,
    ended: Arc<Mutex<Option<Ended>>>,
}

impl Member {
    fn end(self, why: Ended) {
        let mut e = self.ended.lock();
        e.get_or_insert(why);
        // Dropping `tx` closes the member's queue after what it holds.
    }
}

/// Subscribers with one filter.
#[derive(Debug)]
struct Group {
    filter: Filter,
    members: HashMap<u64, Member>,
}

/// A column's index: value to the groups whose filter starts with that column and takes
/// the value.
#[derive(Debug, Default)]
struct ColIndex {
    strs: HashMap<Box<str>, Vec<u64>>,
    ints: HashMap<i128, Vec<u64>>,
    bools: HashMap<bool, Vec<u64>>,
}

impl ColIndex {
    fn get(&self, k: KeyRef<'_>) -> Option<&Vec<u64>> {
        match k {
            KeyRef::Str(s) => self.strs.get(s),
            KeyRef::Int(i) => self.ints.get(&i),
            KeyRef::Bool(b) => self.bools.get(&b),
        }
    }

    fn entry(&mut self, v: &KeyValue) -> &mut Vec<u64> {
        match v {
            KeyValue::Str(s) => self.strs.entry(s.clone()).or_default(),
            KeyValue::Int(i) => self.ints.entry(*i).or_default(),
            KeyValue::Bool(b) => self.bools.entry(*b).or_default(),
        }
    }

    fn remove(&mut self, v: &KeyValue, group: u64) {
        let drop_group = |gs: &mut Vec<u64>| {
            gs.retain(|g| *g != group);
            gs.is_empty()
        };
        match v {
            KeyValue::Str(s) => {
                if self.strs.get_mut(s).is_some_and(drop_group) {
                    self.strs.remove(s);
                }
            }
            KeyValue::Int(i) => {
                if self.ints.get_mut(i).is_some_and(drop_group) {
                    self.ints.remove(i);
                }
            }
            KeyValue::Bool(b) => {
                if self.bools.get_mut(b).is_some_and(drop_group) {
                    self.bools.remove(b);
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.strs.is_empty() && self.ints.is_empty() && self.bools.is_empty()
    }
}

#[derive(Debug, Default)]
struct Index {
    next: u64,
    groups: HashMap<u64, Group>,
    by_filter: HashMap<Filter, u64>,
    by_col: HashMap<usize, ColIndex>,
}

impl Index {
    fn add(
        &mut self,
        filter: Filter,
        tx: mpsc::Sender<Arc<Routed>>,
        ended: Arc<Mutex<Option<Ended>>>,
    ) -> (u64, u64) {
        self.next += 1;
        let id = self.next;
        let group = match self.by_filter.get(&filter) {
            Some(g) => *g,
            None => {
                self.next += 1;
                let g = self.next;
                let (col, values) = &filter.cols[0];
                let index = self.by_col.entry(*col).or_default();
                for v in values {
                    index.entry(v).push(g);
                }
                self.by_filter.insert(filter.clone(), g);
                self.groups.insert(
                    g,
                    Group {
                        filter,
                        members: HashMap::new(),
                    },
                );
                g
            }
        };
        if let Some(g) = self.groups.get_mut(&group) {
            g.members.insert(id, Member { tx, ended });
        }
        (group, id)
    }

    /// Take member `id` out of `group`, dropping the group when it was its last; returns
    /// the member.
    fn remove(&mut self, group: u64, id: u64) -> Option<Member> {
        let g = self.groups.get_mut(&group)?;
        let m = g.members.remove(&id);
        if g.members.is_empty()
            && let Some(g) = self.groups.remove(&group)
        {
            self.by_filter.remove(&g.filter);
            let (col, values) = &g.filter.cols[0];
            if let Some(index) = self.by_col.get_mut(col) {
                for v in values {
                    index.remove(v, group);
                }
                if index.is_empty() {
                    self.by_col.remove(col);
                }
            }
        }
        m
    }

    /// Route one emitted batch: each group with matching rows gets one message, queued to
    /// each of its members. Members whose queue is full or closed are removed.
    fn route(&mut self, view: &str, e: &Arc<Emitted>, keyed: bool) {
        let batch = &e.batch;
        let mut hits: HashMap<u64, Vec<u32>> = HashMap::new();
        for (col, index) in &self.by_col {
            let values = batch.column(*col);
            for i in 0..batch.num_rows() {
                if let Some(k) = key_at(values.as_ref(), i)
                    && let Some(groups) = index.get(k)
                {
                    for g in groups {
                        hits.entry(*g).or_default().push(i as u32);
                    }
                }
            }
        }
        let mut out: Vec<(u64, u64, Option<Ended>)> = Vec::new();
        for (gid, mut rows) in hits {
            let Some(group) = self.groups.get(&gid) else {
                continue;
            };
            if group.filter.cols.len() > 1 {
                rows.retain(|&i| group.filter.matches_from(batch, i as usize, 1));
            }
            if rows.is_empty() {
                continue;
            }
            let msg = match filtered_live(e, &rows, keyed, e.first_seq) {
                Ok(m) => m,
                Err(err) => {
                    tracing::error!(view, "encoding a filtered subscription's rows: {err}");
                    out.extend(
                        group
                            .members
                            .keys()
                            .map(|id| (gid, *id, Some(Ended::Failed))),
                    );
                    continue;
                }
            };
            let routed = Arc::new(Routed {
                emitted: e.clone(),
                rows,
                msg,
            });
            for (id, m) in &group.members {
                match m.tx.try_send(routed.clone()) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        out.push((gid, *id, Some(Ended::Lagged)))
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => out.push((gid, *id, None)),
                }
            }
        }
        for (g, id, why) in out {
            if let Some(m) = self.remove(g, id)
                && let Some(why) = why
            {
                m.end(why);
            }
        }
    }

    /// End every member.
    fn end_all(&mut self, why: Ended) {
        for (_, g) in self.groups.drain() {
            for (_, m) in g.members {
                m.end(why);
            }
        }
        self.by_filter.clear();
        self.by_col.clear();
    }
}

/// The router of one view.
#[derive(Debug)]
struct Router {
    view: String,
    buffer: Arc<ViewBuffer>,
    rooms: Rooms,
    inner: Mutex<Index>,
    stop: tokio::sync::Notify,
}

impl Router {
    async fn run(self: Arc<Self>, mut rx: tokio::sync::broadcast::Receiver<ViewEvent>) {
        let keyed = self.buffer.is_keyed();
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Ok(ViewEvent::Rows(e)) => self.inner.lock().route(&self.view, &e, keyed),
                    Ok(ViewEvent::Dropped) | Err(RecvError::Closed) => {
                        self.retire(Ended::Dropped);
                        return;
                    }
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(view = %self.view, "the filtered subscriptions' router fell {n} batches behind; its subscribers resume");
                        self.retire(Ended::RouterLagged);
                        return;
                    }
                },
                _ = self.stop.notified() => return,
            }
        }
    }

    /// Stop routing: out of the rooms, every member ended.
    fn retire(self: &Arc<Self>, why: Ended) {
        let mut routers = self.rooms.routers.lock();
        if routers
            .get(&self.view)
            .is_some_and(|r| Arc::ptr_eq(r, self))
        {
            routers.remove(&self.view);
        }
        self.inner.lock().end_all(why);
    }

    /// A member leaves; the router stops when it was the last.
    fn leave(self: &Arc<Self>, group: u64, id: u64) {
        let mut routers = self.rooms.routers.lock();
        let mut index = self.inner.lock();
        index.remove(group, id);
        if index.groups.is_empty() {
            if routers
                .get(&self.view)
                .is_some_and(|r| Arc::ptr_eq(r, self))
            {
                routers.remove(&self.view);
            }
            self.stop.notify_one();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("symbol", DataType::Utf8, false),
            Field::new("venue", DataType::Int64, true),
            Field::new("price", DataType::Float64, true),
        ]))
    }

    fn batch(rows: &[(&str, Option<i64>, f64)]) -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(StringArray::from(
                    rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                )),
                Arc::new(Int64Array::from(
                    rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                )),
                Arc::new(Float64Array::from(
                    rows.iter().map(|r| r.2).collect::<Vec<_>>(),
                )),
            ],
        )
        .unwrap()
    }

    fn want(pairs: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
        pairs
            .iter()
            .map(|(c, vs)| (c.to_string(), vs.iter().map(|v| v.to_string()).collect()))
            .collect()
    }

    #[test]
    fn filters_and_across_columns_and_or_within_one() {
        let b = batch(&[
            ("AAPL", Some(1), 1.0),
            ("MSFT", Some(2), 2.0),
            ("AAPL", Some(2), 3.0),
            ("GOOG", None, 4.0),
            ("AAPL", None, 5.0),
        ]);
        let f = Filter::new(&schema(), None, &want(&[("symbol", &["AAPL", "MSFT"])])).unwrap();
        assert_eq!(f.select(&b), vec![0, 1, 2, 4]);
        let f = Filter::new(
            &schema(),
            None,
            &want(&[("symbol", &["AAPL"]), ("venue", &["2"])]),
        )
        .unwrap();
        assert_eq!(f.select(&b), vec![2]);
        // A null matches no value.
        let f = Filter::new(&schema(), None, &want(&[("venue", &["1", "2"])])).unwrap();
        assert_eq!(f.select(&b), vec![0, 1, 2]);
        // Order and repeats do not make another filter.
        let a = Filter::new(&schema(), None, &want(&[("symbol", &["B", "A", "B"])])).unwrap();
        let b = Filter::new(
            &schema(),
            None,
            &want(&[("symbol", &["A"]), ("symbol", &["B"])]),
        )
        .unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn bad_filters_say_why() {
        let s = schema();
        let err = |w: &[(&str, &[&str])], key: Option<&[usize]>| {
            Filter::new(&s, key, &want(w)).unwrap_err()
        };
        assert!(err(&[("sym", &["A"])], None).contains("no column 'sym'"));
        assert!(err(&[("venue", &["x"])], None).contains("'x' is not an integer"));
        assert!(err(&[("price", &["1"])], None).contains("filters take text"));
        assert!(err(&[("venue", &["1"])], Some(&[0])).contains("not a key column"));
        assert!(err(&[], None).contains("at least one column"));
        let many: Vec<String> = (0..=MAX_FILTER_VALUES).map(|i| i.to_string()).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(err(&[("venue", &many)], None).contains("at most"));
    }

    #[tokio::test]
    async fn the_router_sends_each_group_its_rows_and_stops_with_its_last_member() {
        let buffer = Arc::new(ViewBuffer::new(schema(), 100));
        let rooms = Rooms::default();
        let f = |vs: &[&str]| Filter::new(&schema(), None, &want(&[("symbol", vs)])).unwrap();
        let mut a1 = rooms.join("v", &buffer, f(&["AAPL"]));
        let mut a2 = rooms.join("v", &buffer, f(&["AAPL"]));
        let mut am = rooms.join("v", &buffer, f(&["MSFT", "AAPL"]));
        let mut g = rooms.join("v", &buffer, f(&["GOOG"]));
        assert_eq!(rooms.routers(), 1);
        buffer
            .push(
                1,
                batch(&[("AAPL", None, 1.0), ("MSFT", None, 2.0), ("IBM", None, 3.0)]),
                None,
                0,
            )
            .unwrap();
        buffer
            .push(4, batch(&[("GOOG", None, 4.0)]), None, 0)
            .unwrap();
        let r1 = a1.rx.recv().await.unwrap();
        let r2 = a2.rx.recv().await.unwrap();
        assert_eq!(r1.rows, vec![0]);
        // One message for the group, shared.
        assert!(Arc::ptr_eq(&r1, &r2));
        assert_eq!(am.rx.recv().await.unwrap().rows, vec![0, 1]);
        let rg = g.rx.recv().await.unwrap();
        assert_eq!((rg.emitted.first_seq, rg.rows.clone()), (4, vec![0]));
        let v: serde_json::Value = serde_json::from_str(rg.msg.as_str()).unwrap();
        assert_eq!(v["seqs"], serde_json::json!([4]));
        assert_eq!(v["rows"][0]["symbol"], "GOOG");
        // The AAPL-only members got nothing of the GOOG batch.
        assert!(a1.rx.try_recv().is_err());
        drop((a1, a2, am));
        assert_eq!(rooms.routers(), 1);
        drop(g);
        assert_eq!(rooms.routers(), 0);
    }

    #[tokio::test]
    async fn a_member_that_does_not_read_is_ended_as_lagged() {
        let buffer = Arc::new(ViewBuffer::new(schema(), 10));
        let rooms = Rooms::default();
        let f = Filter::new(&schema(), None, &want(&[("symbol", &["A"])])).unwrap();
        let mut slow = rooms.join("v", &buffer, f);
        for i in 0..=SUBSCRIBER_QUEUE_BATCHES as u64 {
            buffer
                .push(i + 1, batch(&[("A", None, 1.0)]), None, 0)
                .unwrap();
            tokio::task::yield_now().await;
        }
        let mut n = 0;
        while slow.rx.recv().await.is_some() {
            n += 1;
        }
        assert_eq!(n, SUBSCRIBER_QUEUE_BATCHES);
        assert_eq!(slow.ended(), Ended::Lagged);
        buffer.close();
    }
}
