//! `kind = 'downloads'`: a content-delivery service's download events.
//!
//! Content popularity is Zipf-like over 500 items (so "top content" is interesting), each
//! item has a fixed type, regions and devices have realistic shares, about 3% of downloads
//! fail (more in some regions), and every region has occasional two-minute bursts of
//! failures (decided by a hash of seed, region and event time, so they are deterministic)
//! that make an alert on "failures > 5% of downloads" fire now and then.

use super::columns::{StrCol, TIMESTAMP, f64_array, round_to, ts_array};
use super::rng::{SplitMix64, cumulative, mix};
use super::{ColumnDef, Kind};
use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::datatypes::DataType;
use weir_engine::Result;

const CONTENT_ITEMS: usize = 500;
const ZIPF_EXPONENT: f64 = 1.07;

const CONTENT_TYPES: [&str; 5] = ["video", "audio", "ebook", "game", "software"];
const CONTENT_TYPE_WEIGHTS: [u32; 5] = [35, 22, 15, 13, 15];
/// Typical size in MB per content type.
const CONTENT_SIZE_MB: [f64; 5] = [1500.0, 9.0, 3.0, 12000.0, 450.0];

const REGIONS: [&str; 8] = [
    "US-East",
    "EU-West",
    "US-West",
    "AP-South",
    "AP-East",
    "SA-East",
    "AF-South",
    "ME-Central",
];
const REGION_WEIGHTS: [u32; 8] = [22, 20, 14, 12, 12, 8, 5, 7];
/// Base failure probability per region.
const REGION_FAILURE: [f64; 8] = [0.02, 0.018, 0.02, 0.04, 0.025, 0.035, 0.045, 0.03];
/// Network quality per region, multiplies speed.
const REGION_SPEED: [f64; 8] = [1.0, 1.0, 1.0, 0.7, 0.9, 0.6, 0.5, 0.8];

const DEVICES: [&str; 4] = ["mobile", "desktop", "tablet", "tv"];
const DEVICE_WEIGHTS: [u32; 4] = [45, 30, 12, 13];
/// Typical speed in Mbit/s per device.
const DEVICE_SPEED: [f64; 4] = [25.0, 80.0, 35.0, 60.0];

const ERROR_CODES: [&str; 4] = ["E_TIMEOUT", "E_NETWORK", "E_DISK", "E_AUTH"];
const ERROR_WEIGHTS: [u32; 4] = [40, 35, 15, 10];

/// Bursts: each region's event time is cut into buckets; a bucket is a burst with this
/// probability, and then downloads there fail with `BURST_FAILURE`.
const BURST_BUCKET_MS: i64 = 120_000;
const BURST_PROBABILITY: f64 = 0.02;
const BURST_FAILURE: f64 = 0.3;

pub(crate) struct Downloads {
    seed: u64,
    rng: SplitMix64,
    id_prefix: String,
    /// Cumulative Zipf probabilities by popularity rank.
    zipf: Vec<f64>,
    /// Popularity rank to content item (so the top items are not simply c-0001, c-0002...).
    rank_to_item: Vec<usize>,
    item_ids: Vec<String>,
    item_type: Vec<usize>,
    region_cum: Vec<u32>,
    device_cum: Vec<u32>,
    error_cum: Vec<u32>,
}

#[derive(Default)]
pub(crate) struct DownloadsBuilders {
    event_id: Option<StrCol>,
    ts: Option<Vec<i64>>,
    content_id: Option<StrCol>,
    content_type: Option<StrCol>,
    region: Option<StrCol>,
    device_type: Option<StrCol>,
    status: Option<StrCol>,
    duration_seconds: Option<Vec<f64>>,
    speed_mbps: Option<Vec<f64>>,
    error_code: Option<StrCol>,
}

impl Kind for Downloads {
    type Builders = DownloadsBuilders;

    fn columns() -> Vec<ColumnDef> {
        use DataType::{Float64, Utf8};
        vec![
            ColumnDef::new("event_id", Utf8, false),
            ColumnDef::new("ts", TIMESTAMP, false),
            ColumnDef::new("content_id", Utf8, false),
            ColumnDef::new("content_type", Utf8, false),
            ColumnDef::new("region", Utf8, false),
            ColumnDef::new("device_type", Utf8, false),
            ColumnDef::new("status", Utf8, false),
            ColumnDef::new("duration_seconds", Float64, false),
            ColumnDef::new("speed_mbps", Float64, false),
            ColumnDef::new("error_code", Utf8, true),
        ]
    }

    fn new(seed: u64) -> Self {
        let mut zipf: Vec<f64> = (1..=CONTENT_ITEMS)
            .map(|rank| 1.0 / (rank as f64).powf(ZIPF_EXPONENT))
            .collect();
        let total: f64 = zipf.iter().sum();
        let mut acc = 0.0;
        for p in &mut zipf {
            acc += *p / total;
            *p = acc;
        }
        // 163 is coprime with 500, so this is a permutation.
        let rank_to_item = (0..CONTENT_ITEMS)
            .map(|r| (r * 163 + 37) % CONTENT_ITEMS)
            .collect();
        let type_cum = cumulative(&CONTENT_TYPE_WEIGHTS);
        let type_total = u64::from(type_cum.last().copied().unwrap_or(1));
        // The catalogue is fixed, independent of the seed: c-0042 is always the same type.
        let item_type = (0..CONTENT_ITEMS)
            .map(|i| {
                let x = (mix(i as u64 + 0x5EED) % type_total) as u32;
                type_cum.iter().position(|c| x < *c).unwrap_or(0)
            })
            .collect();
        Downloads {
            seed,
            rng: SplitMix64::new(seed),
            id_prefix: format!("dl-{seed}-"),
            zipf,
            rank_to_item,
            item_ids: (1..=CONTENT_ITEMS).map(|i| format!("c-{i:04}")).collect(),
            item_type,
            region_cum: cumulative(&REGION_WEIGHTS),
            device_cum: cumulative(&DEVICE_WEIGHTS),
            error_cum: cumulative(&ERROR_WEIGHTS),
        }
    }

    fn builders(&self, wanted: &[bool], rows: usize) -> DownloadsBuilders {
        let want = |i: usize| wanted.get(i).copied().unwrap_or(false);
        let s = |i: usize, bytes: usize| want(i).then(|| StrCol::with_capacity(rows, bytes));
        DownloadsBuilders {
            event_id: s(0, self.id_prefix.len() + 8),
            ts: want(1).then(|| Vec::with_capacity(rows)),
            content_id: s(2, 6),
            content_type: s(3, 6),
            region: s(4, 8),
            device_type: s(5, 6),
            status: s(6, 7),
            duration_seconds: want(7).then(|| Vec::with_capacity(rows)),
            speed_mbps: want(8).then(|| Vec::with_capacity(rows)),
            error_code: s(9, 2),
        }
    }

    #[inline]
    fn append(&mut self, b: &mut DownloadsBuilders, n: u64, ts: i64) {
        let rng = &mut self.rng;
        let u = rng.next_f64();
        let rank = self.zipf.partition_point(|c| *c < u).min(CONTENT_ITEMS - 1);
        let item = self.rank_to_item[rank];
        let ctype = self.item_type[item];
        let region = rng.weighted(&self.region_cum);
        let device = rng.weighted(&self.device_cum);

        let bucket = ts.div_euclid(BURST_BUCKET_MS) as u64;
        let burst_hash = mix(self.seed ^ mix(bucket.wrapping_mul(8).wrapping_add(region as u64)));
        let in_burst = (burst_hash >> 11) as f64 * (1.0 / (1u64 << 53) as f64) < BURST_PROBABILITY;
        let p_fail = if in_burst {
            BURST_FAILURE
        } else {
            REGION_FAILURE[region]
        };
        let failed = rng.next_f64() < p_fail;

        let mut speed = DEVICE_SPEED[device] * REGION_SPEED[region] * (0.45 * rng.normal()).exp();
        let size_mb = CONTENT_SIZE_MB[ctype] * (0.6 * rng.normal()).exp();
        let mut duration = size_mb * 8.0 / speed.max(0.1);
        let error = rng.weighted(&self.error_cum);
        let cut = rng.next_f64();
        if failed {
            speed *= 0.3;
            duration *= cut;
        }

        if let Some(c) = &mut b.event_id {
            c.push_prefixed_u64(&self.id_prefix, n);
        }
        if let Some(c) = &mut b.ts {
            c.push(ts);
        }
        if let Some(c) = &mut b.content_id {
            c.push(&self.item_ids[item]);
        }
        if let Some(c) = &mut b.content_type {
            c.push(CONTENT_TYPES[ctype]);
        }
        if let Some(c) = &mut b.region {
            c.push(REGIONS[region]);
        }
        if let Some(c) = &mut b.device_type {
            c.push(DEVICES[device]);
        }
        if let Some(c) = &mut b.status {
            c.push(if failed { "failed" } else { "success" });
        }
        if let Some(c) = &mut b.duration_seconds {
            c.push(round_to(duration, 1000.0));
        }
        if let Some(c) = &mut b.speed_mbps {
            c.push(round_to(speed, 100.0));
        }
        if let Some(c) = &mut b.error_code {
            if failed {
                c.push(ERROR_CODES[error]);
            } else {
                c.push_null();
            }
        }
    }

    fn finish(b: &mut DownloadsBuilders) -> Result<Vec<Option<ArrayRef>>> {
        let s = |c: &mut Option<StrCol>| c.as_mut().map(StrCol::finish).transpose();
        Ok(vec![
            s(&mut b.event_id)?,
            b.ts.as_mut().map(ts_array),
            s(&mut b.content_id)?,
            s(&mut b.content_type)?,
            s(&mut b.region)?,
            s(&mut b.device_type)?,
            s(&mut b.status)?,
            b.duration_seconds.as_mut().map(f64_array),
            b.speed_mbps.as_mut().map(f64_array),
            s(&mut b.error_code)?,
        ])
    }
}
