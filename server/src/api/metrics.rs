//! `/metrics` in the Prometheus text format, and the once-a-second rate sampler behind
//! every `rows_per_sec` figure.

// Writing to a String cannot fail: the `fmt::Result`s of `writeln!` below are ignored.
use std::fmt::Write;
use std::time::Duration;
use weir_engine::catalog::{CatalogHandle, ObjectInfo};
use weir_engine::sql::ObjectKind;
use weir_engine::stats::Status;

/// Sample every object's input rate once a second.
pub async fn sample_rates(catalog: CatalogHandle) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        for o in catalog.objects().iter() {
            o.stats.sample_rate();
        }
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Family<'a> {
    name: &'a str,
    help: &'a str,
    kind: &'a str,
    label: &'a str,
    value: fn(&ObjectInfo) -> Option<f64>,
}

fn family(out: &mut String, objects: &[&ObjectInfo], f: Family) {
    let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
    let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
    for o in objects {
        if let Some(v) = (f.value)(o) {
            let _ = writeln!(
                out,
                "{}{{{}=\"{}\"}} {}",
                f.name,
                f.label,
                escape(&o.name),
                v
            );
        }
    }
}

fn watermark_seconds(o: &ObjectInfo) -> Option<f64> {
    o.stats
        .watermark()
        .filter(|w| *w != i64::MAX)
        .map(|w| w as f64 / 1000.0)
}

fn counter(c: &std::sync::atomic::AtomicU64) -> f64 {
    weir_engine::stats::Stats::get(c) as f64
}

/// Render every figure of every source, view and sink.
pub fn render(
    catalog: &CatalogHandle,
    dropped_subscribers: &[std::sync::atomic::AtomicU64; 2],
) -> String {
    let objects = catalog.objects();
    let of =
        |k: ObjectKind| -> Vec<&ObjectInfo> { objects.iter().filter(|o| o.kind == k).collect() };
    let (sources, views, sinks) = (
        of(ObjectKind::Source),
        of(ObjectKind::View),
        of(ObjectKind::Sink),
    );
    let mut out = String::new();
    let all: Vec<&ObjectInfo> = objects.iter().collect();
    let _ = writeln!(
        out,
        "# HELP weir_object_status 1 for the object's current status (starting, running, finished, failed, retrying)."
    );
    let _ = writeln!(out, "# TYPE weir_object_status gauge");
    for o in &all {
        for s in [
            Status::Starting,
            Status::Running,
            Status::Finished,
            Status::Failed,
            Status::Retrying,
        ] {
            let _ = writeln!(
                out,
                "weir_object_status{{kind=\"{}\",name=\"{}\",status=\"{}\"}} {}",
                match o.kind {
                    ObjectKind::Source => "source",
                    ObjectKind::View => "view",
                    ObjectKind::Sink => "sink",
                    ObjectKind::Table => "table",
                },
                escape(&o.name),
                s.as_str(),
                u8::from(o.stats.status() == s)
            );
        }
    }
    let families: [(&[&ObjectInfo], Family); 20] = [
        (
            &sources,
            Family {
                name: "weir_source_rows_total",
                help: "Rows read by the source.",
                kind: "counter",
                label: "source",
                value: |o| Some(counter(&o.stats.rows_in)),
            },
        ),
        (
            &sources,
            Family {
                name: "weir_source_bytes_total",
                help: "Payload bytes read by the source (Kafka).",
                kind: "counter",
                label: "source",
                value: |o| Some(counter(&o.stats.bytes)),
            },
        ),
        (
            &sources,
            Family {
                name: "weir_source_bad_rows_total",
                help: "Malformed records skipped or dead-lettered.",
                kind: "counter",
                label: "source",
                value: |o| Some(counter(&o.stats.bad_rows)),
            },
        ),
        (
            &sources,
            Family {
                name: "weir_source_lag_messages",
                help: "Messages not read yet, summed over partitions (Kafka).",
                kind: "gauge",
                label: "source",
                value: |o| o.stats.lag().map(|l| l as f64),
            },
        ),
        (
            &sources,
            Family {
                name: "weir_source_watermark_seconds",
                help: "The source's event-time watermark, epoch seconds.",
                kind: "gauge",
                label: "source",
                value: watermark_seconds,
            },
        ),
        (
            &sources,
            Family {
                name: "weir_source_rows_per_second",
                help: "Rows read per second over the last second.",
                kind: "gauge",
                label: "source",
                value: |o| Some(o.stats.rows_per_sec()),
            },
        ),
        (
            &views,
            Family {
                name: "weir_view_rows_in_total",
                help: "Rows the view consumed.",
                kind: "counter",
                label: "view",
                value: |o| Some(counter(&o.stats.rows_in)),
            },
        ),
        (
            &views,
            Family {
                name: "weir_view_rows_out_total",
                help: "Rows the view emitted.",
                kind: "counter",
                label: "view",
                value: |o| Some(counter(&o.stats.rows_out)),
            },
        ),
        (
            &views,
            Family {
                name: "weir_view_late_rows_total",
                help: "Rows dropped because their window had closed.",
                kind: "counter",
                label: "view",
                value: |o| Some(counter(&o.stats.late_rows)),
            },
        ),
        (
            &views,
            Family {
                name: "weir_view_watermark_seconds",
                help: "The view's watermark, epoch seconds.",
                kind: "gauge",
                label: "view",
                value: watermark_seconds,
            },
        ),
        (
            &views,
            Family {
                name: "weir_view_open_windows",
                help: "Windows open in the view's state.",
                kind: "gauge",
                label: "view",
                value: |o| Some(counter(&o.stats.open_windows)),
            },
        ),
        (
            &views,
            Family {
                name: "weir_view_open_groups",
                help: "Groups open in the view's state.",
                kind: "gauge",
                label: "view",
                value: |o| Some(counter(&o.stats.open_groups)),
            },
        ),
        (
            &views,
            Family {
                name: "weir_view_state_bytes",
                help: "Approximate bytes of the view's window state.",
                kind: "gauge",
                label: "view",
                value: |o| Some(counter(&o.stats.state_bytes)),
            },
        ),
        (
            &views,
            Family {
                name: "weir_view_key_partitions",
                help: "Key partitions the view's window state is split into.",
                kind: "gauge",
                label: "view",
                value: |o| Some(counter(&o.stats.key_partitions)),
            },
        ),
        (
            &views,
            Family {
                name: "weir_view_busiest_partition_groups",
                help: "Groups in the view's largest key partition (skew: far above open groups / key partitions).",
                kind: "gauge",
                label: "view",
                value: |o| Some(counter(&o.stats.busiest_partition_groups)),
            },
        ),
        (
            &views,
            Family {
                name: "weir_view_busiest_partition_share",
                help: "Percent of the view's stage-2 work done by its busiest key partition.",
                kind: "gauge",
                label: "view",
                value: |o| Some(counter(&o.stats.busiest_partition_share)),
            },
        ),
        (
            &views,
            Family {
                name: "weir_view_subscribers",
                help: "WebSocket subscribers of the view.",
                kind: "gauge",
                label: "view",
                value: |o| o.buffer.as_ref().map(|b| b.subscribers() as f64),
            },
        ),
        (
            &sinks,
            Family {
                name: "weir_sink_rows_total",
                help: "Rows written by the sink.",
                kind: "counter",
                label: "sink",
                value: |o| Some(counter(&o.stats.rows_out)),
            },
        ),
        (
            &sinks,
            Family {
                name: "weir_sink_bytes_total",
                help: "Bytes written by the sink, where the connector counts them.",
                kind: "counter",
                label: "sink",
                value: |o| Some(counter(&o.stats.bytes)),
            },
        ),
        (
            &sinks,
            Family {
                name: "weir_sink_errors_total",
                help: "Errors the sink retried or reported.",
                kind: "counter",
                label: "sink",
                value: |o| {
                    Some(
                        counter(&o.stats.errors)
                            + f64::from(u8::from(o.stats.status() == Status::Failed)),
                    )
                },
            },
        ),
    ];
    for (objects, f) in families {
        family(&mut out, objects, f);
    }
    checkpoint_metrics(&mut out, &catalog.checkpoint_stats());
    let _ = writeln!(
        out,
        "# HELP weir_ws_subscribers_dropped_total WebSocket subscribers closed for being slow: \
         fell further behind than the queue holds (lagged), or did not take a message within \
         server.ws_send_timeout (send_timeout).\n# TYPE weir_ws_subscribers_dropped_total counter"
    );
    for (reason, n) in ["lagged", "send_timeout"].iter().zip(dropped_subscribers) {
        let _ = writeln!(
            out,
            "weir_ws_subscribers_dropped_total{{reason=\"{reason}\"}} {}",
            n.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
    out
}

fn checkpoint_metrics(out: &mut String, c: &weir_engine::stats::CheckpointStats) {
    use std::sync::atomic::Ordering::Relaxed;
    let last_at = c.last_at_ms.load(Relaxed);
    let figures: [(&str, &str, &str, f64); 7] = [
        (
            "weir_checkpoint_epoch",
            "gauge",
            "The newest complete checkpoint's epoch (0 before the first).",
            c.epoch.load(Relaxed) as f64,
        ),
        (
            "weir_checkpoints_completed_total",
            "counter",
            "Checkpoints completed since start.",
            c.completed.load(Relaxed) as f64,
        ),
        (
            "weir_checkpoints_failed_total",
            "counter",
            "Checkpoints that failed since start (the next one tries again).",
            c.failed.load(Relaxed) as f64,
        ),
        (
            "weir_checkpoint_duration_seconds",
            "gauge",
            "How long the last checkpoint took, from barrier to published manifest.",
            c.last_duration_ms.load(Relaxed) as f64 / 1000.0,
        ),
        (
            "weir_checkpoint_bytes",
            "gauge",
            "State bytes the last checkpoint wrote.",
            c.last_bytes.load(Relaxed) as f64,
        ),
        (
            "weir_checkpoint_last_timestamp_seconds",
            "gauge",
            "When the last checkpoint completed (Unix time; 0 before the first).",
            if last_at > 0 {
                last_at as f64 / 1000.0
            } else {
                0.0
            },
        ),
        (
            "weir_checkpoint_restore_seconds",
            "gauge",
            "How long the restore at start took (0 when the pipeline started afresh).",
            c.restore_ms.load(Relaxed) as f64 / 1000.0,
        ),
    ];
    for (name, kind, help, value) in figures {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {value}");
    }
}
