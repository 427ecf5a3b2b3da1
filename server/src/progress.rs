//! Progress lines: one per source and view every interval, with rates since the last line.

use std::collections::HashMap;
use std::time::{Duration, Instant};
use weir_engine::catalog::{CatalogHandle, ObjectInfo};
use weir_engine::sql::ObjectKind;
use weir_engine::stats::fmt_watermark;

fn human(n: f64) -> String {
    if n >= 1e9 {
        format!("{:.2}G", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.2}M", n / 1e6)
    } else if n >= 1e4 {
        format!("{:.1}k", n / 1e3)
    } else {
        format!("{n:.0}")
    }
}

fn line(o: &ObjectInfo, rate: Option<f64>) -> String {
    let rate = |unit: &str| {
        rate.map(|r| format!(", {} {unit}", human(r)))
            .unwrap_or_default()
    };
    let s = o.stats.snapshot();
    match o.kind {
        ObjectKind::Source => format!(
            "source {} ({}): {} rows{}, watermark {}, bad {}",
            o.name,
            o.detail,
            human(s.rows_in as f64),
            rate("rows/s"),
            fmt_watermark(s.watermark),
            s.bad_rows
        ),
        ObjectKind::View => format!(
            "view {}: in {} rows{}, out {} rows, watermark {}, late {}, open windows {} ({} groups)",
            o.name,
            human(s.rows_in as f64),
            rate("rows/s"),
            human(s.rows_out as f64),
            fmt_watermark(s.watermark),
            s.late_rows,
            s.open_windows,
            s.open_groups
        ),
        ObjectKind::Table => format!(
            "table {} ({}): {} rows, loaded {} times{}",
            o.name,
            o.detail,
            human(s.rows_in as f64),
            weir_engine::stats::Stats::get(&o.stats.batches),
            s.last_error
                .map(|e| format!(", last error: {e}"))
                .unwrap_or_default()
        ),
        ObjectKind::Sink => format!(
            "sink {} ({}): {} rows written{}",
            o.name,
            o.detail,
            human(s.rows_in as f64),
            s.last_error
                .map(|e| format!(", error: {e}"))
                .unwrap_or_default()
        ),
    }
}

/// Print a line per object every `every`; objects created or dropped while running (over
/// the API) come and go.
pub async fn report(catalog: CatalogHandle, every: Duration) {
    let mut last: HashMap<String, (u64, Instant)> = HashMap::new();
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        for o in catalog.objects().iter() {
            let rows = o.stats.snapshot().rows_in;
            let now = Instant::now();
            let (prev, t) = last.get(&o.name).copied().unwrap_or((0, now - every));
            let secs = now.duration_since(t).as_secs_f64().max(1e-3);
            let rate = rows.saturating_sub(prev) as f64 / secs;
            last.insert(o.name.clone(), (rows, now));
            tracing::info!("{}", line(o, Some(rate)));
            if o.stats.status() == weir_engine::stats::Status::Failed
                && let Some(e) = o.stats.last_error()
            {
                tracing::warn!("{} {} has failed: {e}", o.kind.noun(), o.name);
            }
        }
    }
}

pub fn summary(objects: &[ObjectInfo]) {
    for o in objects {
        tracing::info!("final: {}", line(o, None));
    }
}
