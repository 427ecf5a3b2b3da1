//! `kind = 'ticks'`: stock trades. Each symbol's price is a random walk from a realistic
//! starting price; volumes are log-normal, in shares.

use super::columns::{StrCol, TIMESTAMP, f64_array, i64_array, round_to, ts_array};
use super::rng::{SplitMix64, cumulative};
use super::{ColumnDef, Kind};
use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::datatypes::DataType;
use weir_engine::Result;

/// Symbol, starting price, relative trading activity.
const SYMBOLS: [(&str, f64, u32); 12] = [
    ("AAPL", 190.0, 16),
    ("GOOGL", 140.0, 10),
    ("AMZN", 180.0, 11),
    ("TSLA", 250.0, 14),
    ("MSFT", 420.0, 12),
    ("NVDA", 120.0, 15),
    ("META", 500.0, 8),
    ("NFLX", 650.0, 4),
    ("AMD", 160.0, 5),
    ("INTC", 35.0, 3),
    ("ORCL", 130.0, 1),
    ("CRM", 270.0, 1),
];
/// Per-tick volatility of the log price.
const TICK_VOLATILITY: f64 = 0.0004;

pub(crate) struct Ticks {
    rng: SplitMix64,
    prices: Vec<f64>,
    symbol_cum: Vec<u32>,
}

#[derive(Default)]
pub(crate) struct TicksBuilders {
    symbol: Option<StrCol>,
    price: Option<Vec<f64>>,
    volume: Option<Vec<i64>>,
    ts: Option<Vec<i64>>,
}

impl Kind for Ticks {
    type Builders = TicksBuilders;

    fn columns() -> Vec<ColumnDef> {
        vec![
            ColumnDef::new("symbol", DataType::Utf8, false),
            ColumnDef::new("price", DataType::Float64, false),
            ColumnDef::new("volume", DataType::Int64, false),
            ColumnDef::new("ts", TIMESTAMP, false),
        ]
    }

    fn new(seed: u64) -> Self {
        Ticks {
            rng: SplitMix64::new(seed),
            prices: SYMBOLS.iter().map(|s| s.1).collect(),
            symbol_cum: cumulative(&SYMBOLS.map(|s| s.2)),
        }
    }

    fn builders(&self, wanted: &[bool], rows: usize) -> TicksBuilders {
        let want = |i: usize| wanted.get(i).copied().unwrap_or(false);
        TicksBuilders {
            symbol: want(0).then(|| StrCol::with_capacity(rows, 4)),
            price: want(1).then(|| Vec::with_capacity(rows)),
            volume: want(2).then(|| Vec::with_capacity(rows)),
            ts: want(3).then(|| Vec::with_capacity(rows)),
        }
    }

    #[inline]
    fn append(&mut self, b: &mut TicksBuilders, _n: u64, ts: i64) {
        let rng = &mut self.rng;
        let s = rng.weighted(&self.symbol_cum);
        let price = &mut self.prices[s];
        *price = (*price * (TICK_VOLATILITY * rng.normal()).exp()).max(0.01);
        let volume = (100.0 * (1.2 * rng.normal()).exp()).round().max(1.0) as i64;

        if let Some(c) = &mut b.symbol {
            c.push(SYMBOLS[s].0);
        }
        if let Some(c) = &mut b.price {
            c.push(round_to(*price, 100.0));
        }
        if let Some(c) = &mut b.volume {
            c.push(volume);
        }
        if let Some(c) = &mut b.ts {
            c.push(ts);
        }
    }

    fn finish(b: &mut TicksBuilders) -> Result<Vec<Option<ArrayRef>>> {
        Ok(vec![
            b.symbol.as_mut().map(StrCol::finish).transpose()?,
            b.price.as_mut().map(f64_array),
            b.volume.as_mut().map(i64_array),
            b.ts.as_mut().map(ts_array),
        ])
    }
}
