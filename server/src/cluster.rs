//! `weir run` as a member of a Weir cluster (`[cluster] group`, docs/cluster.md): the SQL
//! is planned as for a single process, then each source's views run through the cluster's
//! consumer groups and exchange topics (`weir_connectors::kafka::cluster`) instead of the
//! single-process runtime.

use crate::app::duration;
use crate::config::{ClusterSection, Config};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use weir_connectors::kafka::cluster::{
    ClusterSettings, GroupProtocol, MemberSource, ViewParts, ViewStatus, start_source,
};
use weir_connectors::kafka::source::ClusterInput;
use weir_engine::object::ObjectKind;
use weir_engine::pipeline::Pipeline;

/// The member id when `[cluster] member` is not set: the host name and a hash of the
/// data directory, so two members on one machine differ and a restart keeps its id.
pub fn default_member(data_dir: &Path) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "weir".into());
    let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    // FNV-1a: stable across builds and versions, unlike the std hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in dir.to_string_lossy().bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{host}-{:08x}", h as u32)
}

pub fn settings(section: &ClusterSection, data_dir: &Path) -> Result<ClusterSettings> {
    let Some(group) = section.group.clone() else {
        bail!("[cluster] group is not set");
    };
    let valid = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if !valid(&group) {
        bail!(
            "[cluster] group '{group}' must be letters, digits, '-', '_' or '.' (it names \
             Kafka topics and consumer groups)"
        );
    }
    let member = section
        .member
        .clone()
        .unwrap_or_else(|| default_member(data_dir));
    if !valid(&member) {
        bail!("[cluster] member '{member}' must be letters, digits, '-', '_' or '.'");
    }
    let session_timeout = duration("cluster.session_timeout", &section.session_timeout)?;
    if !(Duration::from_secs(1)..=Duration::from_secs(300)).contains(&session_timeout) {
        bail!("[cluster] session_timeout must be between 1s and 300s");
    }
    Ok(ClusterSettings {
        state_dir: section
            .state_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("weir-cluster").join(&group)),
        group,
        member,
        session_timeout,
        snapshot_interval: duration("cluster.snapshot_interval", &section.snapshot_interval)?,
        group_protocol: match section.group_protocol.as_str() {
            "classic" => GroupProtocol::Classic,
            "consumer" => GroupProtocol::Consumer,
            other => bail!(
                "[cluster] group_protocol = '{other}': expected 'classic' or 'consumer' (KIP-848)"
            ),
        },
        assignor: match section.assignor.as_str() {
            a @ ("roundrobin" | "range" | "cooperative-sticky") => a.to_string(),
            other => bail!(
                "[cluster] assignor = '{other}': expected 'roundrobin', 'range' or \
                 'cooperative-sticky'"
            ),
        },
        step_rows: section.step_rows.max(1),
        step_delay: duration("cluster.step_delay", &section.step_delay)?,
    })
}

/// This member's own figures per view, for `GET /api/v1/cluster` (`member`).
fn member_figures(id: &str, statuses: &[(String, Arc<ViewStatus>)]) -> serde_json::Value {
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let views: serde_json::Map<String, serde_json::Value> = statuses
        .iter()
        .map(|(view, s)| {
            let restore = *s.last_restore.lock();
            (
                view.clone(),
                serde_json::json!({
                    "input_partitions": *s.inputs.lock(),
                    "key_partitions": *s.keys.lock(),
                    "records_in": get(&s.records_in),
                    "rows_out": get(&s.rows_out),
                    "exchange_bytes": get(&s.exchange_bytes),
                    "steps_committed": get(&s.committed),
                    "steps_aborted": get(&s.aborted),
                    "snapshots": get(&s.snapshots),
                    "rebalances": get(&s.rebalances),
                    "fenced": get(&s.fenced),
                    "last_restore": restore.map(|(kp, groups, ms)| serde_json::json!({
                        "key_partition": kp, "open_groups": groups, "ms": ms
                    })),
                }),
            )
        })
        .collect();
    serde_json::json!({ "id": id, "views": views })
}

/// One progress line for a view on this member: what it owns and how fast it goes.
fn progress(
    view: &str,
    s: &weir_connectors::kafka::cluster::ViewStatus,
    secs: f64,
    before: &mut BTreeMap<String, u64>,
) {
    let records = s.records_in.load(Ordering::Relaxed);
    let prev = before.insert(view.to_string(), records).unwrap_or(0);
    tracing::info!(
        view,
        inputs = ?*s.inputs.lock(),
        key_partitions = ?*s.keys.lock(),
        records_per_sec = ((records - prev) as f64 / secs.max(0.001)) as u64,
        rows_out = s.rows_out.load(Ordering::Relaxed),
        steps_aborted = s.aborted.load(Ordering::Relaxed),
        rebalances = s.rebalances.load(Ordering::Relaxed),
        fenced = s.fenced.load(Ordering::Relaxed),
        "cluster progress"
    );
}

/// Run this member until `shutdown`: its share of the views' work, and the API and
/// dashboard serving every view whole (from the views' results topics).
pub async fn run(
    mut pipeline: Pipeline,
    cfg: &Config,
    endpoints: weir_connectors::http::Endpoints,
    on_listen: Option<tokio::sync::oneshot::Sender<std::net::SocketAddr>>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let settings = settings(&cfg.cluster, &cfg.engine.data_dir)?;
    // Every view must run in the cluster; a view a cluster cannot run yet is an error
    // that names it, before anything starts.
    let catalog = pipeline.catalog();
    let mut views = BTreeMap::new();
    for o in catalog.objects().iter() {
        if o.kind == ObjectKind::View {
            let v = pipeline.cluster_view(&o.name)?;
            views.insert(
                o.name.clone(),
                (Arc::new(v), Vec::new(), pipeline.view_buffer(&o.name)),
            );
        }
    }
    for mut s in pipeline.take_new_sinks() {
        if !weir_connectors::kafka::cluster::runs_in_cluster(&mut s.sink) {
            bail!(
                "sink '{}': a cluster replays a key partition's rows after a failover, so it \
                 takes only sinks that write by key (postgres, blackhole), in its own \
                 transactions (kafka) or per key partition (parquet) yet",
                s.name
            );
        }
        let Some((_, sinks, _)) = views.get_mut(&s.view) else {
            bail!("sink '{}' reads '{}', which is not a view", s.name, s.view);
        };
        sinks.push(s.sink);
    }
    let handle = tokio::runtime::Handle::current();
    let mut members: Vec<MemberSource> = Vec::new();
    let mut result = Ok(());
    // What `GET /api/v1/cluster` describes: (source, topic) and views, on the sources'
    // Kafka.
    let mut described: (Vec<(String, String)>, Vec<String>) = (Vec::new(), Vec::new());
    let mut client = None;
    for (source, src) in pipeline.take_new_sources() {
        let Some(input) = src
            .cluster_input()
            .and_then(|a| a.downcast::<ClusterInput>().ok())
        else {
            result = Err(anyhow::anyhow!(
                "source '{source}': a cluster reads Kafka sources only"
            ));
            break;
        };
        let over: Vec<String> = views
            .iter()
            .filter(|(_, (v, _, _))| v.source == source)
            .map(|(n, _)| n.clone())
            .collect();
        let parts = over
            .iter()
            .filter_map(|n| views.remove(n))
            .map(|(view, sinks, buffer)| ViewParts {
                view,
                sinks,
                buffer,
            })
            .collect::<Vec<_>>();
        if parts.is_empty() {
            continue;
        }
        described
            .0
            .push((source.clone(), input.topic().to_string()));
        described
            .1
            .extend(parts.iter().map(|p| p.view.view.clone()));
        client.get_or_insert_with(|| input.client_config(&[]));
        match start_source(&settings, *input, parts, handle.clone()).await {
            Ok(m) => members.push(m),
            Err(e) => {
                result = Err(anyhow::anyhow!("source '{source}': {e}"));
                break;
            }
        }
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut server = None;
    if result.is_ok() && cfg.server.enabled {
        // Statements over the API are refused: a cluster runs the SQL every member was
        // started with (the controller's receiver is dropped).
        let (controller, _) = weir_engine::runtime::Controller::new();
        let state = Arc::new(crate::state::StateDir::open(&cfg.engine.data_dir)?);
        let group = settings.group.clone();
        let me = settings.member.clone();
        let statuses: Vec<(String, Arc<ViewStatus>)> =
            members.iter().flat_map(|m| m.views.clone()).collect();
        let app = |api| {
            let app = crate::api::AppState::new(catalog.clone(), controller, api, state, stop_rx)
                .with_endpoints(endpoints);
            match client {
                Some(client) => app.with_cluster(Arc::new(move || {
                    let mut d = weir_connectors::kafka::cluster::describe(
                        &client,
                        &group,
                        &described.0,
                        &described.1,
                    )?;
                    d["member"] = member_figures(&me, &statuses);
                    Ok(d)
                })),
                None => app,
            }
        };
        match crate::app::start_api(cfg, on_listen, app).await {
            Ok(s) => server = Some(s),
            Err(e) => result = Err(e),
        }
    }
    if result.is_ok() {
        tracing::info!(
            group = %settings.group,
            member = %settings.member,
            state_dir = %settings.state_dir.display(),
            views = members.iter().map(|m| m.views.len()).sum::<usize>(),
            "running as a cluster member; Ctrl-C stops (handing its partitions over)"
        );
        let every = duration("run.progress_interval", &cfg.run.progress_interval)?;
        let failed = async {
            let mut last_report = tokio::time::Instant::now();
            let mut before: BTreeMap<String, u64> = BTreeMap::new();
            loop {
                if let Some(f) = members.iter().find_map(|m| m.failure()) {
                    return f;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                if !every.is_zero() && last_report.elapsed() >= every {
                    let secs = last_report.elapsed().as_secs_f64();
                    last_report = tokio::time::Instant::now();
                    for m in &members {
                        for (view, s) in &m.views {
                            progress(view, s, secs, &mut before);
                        }
                    }
                }
            }
        };
        tokio::select! {
            _ = shutdown => {}
            f = failed => result = Err(anyhow::anyhow!("cluster member failed: {f}")),
        }
        tracing::info!("stopping: snapshotting and handing over this member's partitions");
    }
    let stopping = tokio::task::spawn_blocking(move || {
        for m in members {
            let views = m.views.clone();
            m.stop();
            for (view, s) in views {
                let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
                tracing::info!(
                    view = %view,
                    records_in = get(&s.records_in),
                    exchange_bytes = get(&s.exchange_bytes),
                    steps_committed = get(&s.committed),
                    steps_aborted = get(&s.aborted),
                    rows_out = get(&s.rows_out),
                    snapshots = get(&s.snapshots),
                    rebalances = get(&s.rebalances),
                    fenced = get(&s.fenced),
                    "cluster member totals"
                );
            }
        }
    });
    stopping.await.context("stopping the cluster threads")?;
    let _ = stop_tx.send(true);
    crate::app::stop_api(server).await;
    result
}
