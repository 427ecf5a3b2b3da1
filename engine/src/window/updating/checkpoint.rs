//! An updating aggregate's checkpoints: its groups (keys, states, when each last changed,
//! its input rows) and, with `EMIT EVERY`, the changes held for the next flush.

use super::{Group, Held, UpdatingAggregator, take_all};
use crate::error::{Result, WeirError};
use crate::window::check_state_schema;
use crate::window::groups::cast_to;
use datafusion::arrow::array::{Array, ArrayRef, Int64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use std::sync::Arc;

/// Checkpointed groups, decoded: the extra columns, the keys and the states (row format).
type Decoded = (Vec<ArrayRef>, Vec<Box<[u8]>>, datafusion::arrow::row::Rows);

impl UpdatingAggregator {
    /// What checkpoints keep of groups: key columns, state columns, then `extra`.
    fn checkpoint_schema(&self, extra: Vec<Field>) -> SchemaRef {
        let mut fields: Vec<Field> = self
            .layout
            .key_schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.extend(self.state_fields.iter().cloned());
        fields.extend(extra);
        Arc::new(Schema::new(fields))
    }

    /// The groups as checkpoints keep them: keys, states, `__changed_ms` and `__rows`.
    pub fn state_schema(&self) -> SchemaRef {
        self.checkpoint_schema(vec![
            Field::new("__changed_ms", DataType::Int64, false),
            Field::new("__rows", DataType::Int64, false),
        ])
    }

    /// Checkpointed rows of `schema` (keys, states, then the extra columns): the extra
    /// columns, and each row's key and state in the row format.
    fn decode_checkpoint(
        &self,
        what: &str,
        batch: &RecordBatch,
        schema: &SchemaRef,
    ) -> Result<Decoded> {
        check_state_schema(what, batch, schema)?;
        let cols = batch
            .columns()
            .iter()
            .zip(schema.fields())
            .map(|(c, f)| cast_to(c.clone(), f.data_type()))
            .collect::<Result<Vec<_>>>()?;
        let nkeys = self.group_names.len();
        let states_end = nkeys + self.state_fields.len();
        let keys = match nkeys {
            0 => vec![Box::default(); batch.num_rows()],
            _ => {
                let rows = self.keys.convert_columns(&cols[..nkeys])?;
                rows.iter().map(|r| r.data().into()).collect()
            }
        };
        let states = self.states.convert_columns(&cols[nkeys..states_end])?;
        Ok((cols[states_end..].to_vec(), keys, states))
    }

    pub fn snapshot(&self) -> Result<Vec<RecordBatch>> {
        if self.groups.is_empty() {
            return Ok(vec![]);
        }
        let keys: Vec<Box<[u8]>> = self.groups.keys().cloned().collect();
        let mut cols = self.parse_keys(&keys)?;
        cols.extend(self.parse_states(keys.iter())?);
        cols.push(Arc::new(Int64Array::from_iter_values(
            keys.iter().map(|k| self.groups[k].changed_ms),
        )));
        cols.push(Arc::new(Int64Array::from_iter_values(
            keys.iter().map(|k| self.groups[k].rows),
        )));
        Ok(vec![RecordBatch::try_new(self.state_schema(), cols)?])
    }

    /// The schema of [`UpdatingAggregator::snapshot_pending`]: key columns, the state
    /// columns (null for a group that has not come out) and `__emitted`.
    fn pending_schema(&self) -> SchemaRef {
        self.checkpoint_schema(vec![Field::new("__emitted", DataType::Boolean, false)])
    }

    /// `EMIT EVERY`: the changes held for the next flush, for a checkpoint.
    pub fn snapshot_pending(&self) -> Result<Vec<RecordBatch>> {
        let Some(pending) = self.pending.as_ref().filter(|p| !p.is_empty()) else {
            return Ok(vec![]);
        };
        let keys: Vec<Box<[u8]>> = pending.keys().cloned().collect();
        let emitted: Vec<bool> = keys.iter().map(|k| pending[k].is_some()).collect();
        let states = self.states_of(keys.iter().filter_map(|k| pending[k].as_deref()))?;
        // One row per key: its emitted state, or nulls.
        let at = crate::window::positions_of(emitted.iter().copied());
        let mut cols = self.parse_keys(&keys)?;
        cols.extend(take_all(&states, &at)?);
        cols.push(Arc::new(datafusion::arrow::array::BooleanArray::from(
            emitted,
        )));
        Ok(vec![RecordBatch::try_new(self.pending_schema(), cols)?])
    }

    /// Put back the held changes of [`UpdatingAggregator::snapshot_pending`].
    pub fn restore_pending(&mut self, batches: &[RecordBatch]) -> Result<()> {
        let schema = self.pending_schema();
        let mut pending = Held::default();
        for b in batches {
            let (extra, keys, states) =
                self.decode_checkpoint("held changes of an updating view", b, &schema)?;
            let emitted = extra[0]
                .as_any()
                .downcast_ref::<datafusion::arrow::array::BooleanArray>()
                .ok_or_else(|| WeirError::Internal("__emitted is not boolean".into()))?;
            for (i, key) in keys.into_iter().enumerate() {
                let state = emitted.value(i).then(|| states.row(i).data().into());
                pending.insert(key, state);
            }
        }
        if self.pending.is_some() {
            self.pending = Some(pending);
        }
        Ok(())
    }

    pub fn restore(&mut self, batches: &[RecordBatch]) -> Result<()> {
        self.groups.clear();
        self.bytes = 0;
        let schema = self.state_schema();
        for b in batches {
            let (extra, keys, states) =
                self.decode_checkpoint("updating aggregate state", b, &schema)?;
            let changed = int64(&extra[0])?;
            let rows = int64(&extra[1])?;
            for (i, key) in keys.into_iter().enumerate() {
                let group = Group {
                    state: states.row(i).data().into(),
                    changed_ms: changed.value(i),
                    rows: rows.value(i),
                };
                self.put_group(key, group);
            }
        }
        Ok(())
    }
}

fn int64(c: &ArrayRef) -> Result<Int64Array> {
    c.as_any()
        .downcast_ref::<Int64Array>()
        .cloned()
        .ok_or_else(|| WeirError::Internal("updating state: not Int64".into()))
}
