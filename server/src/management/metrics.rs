//! `GET /metrics`: the node's metrics in Prometheus's text format. What happens (firings,
//! commits, cache operations, requests, handovers) is counted where it happens, through the
//! `metrics` facade; what is a state (depths, entries, the view, counters a part already keeps)
//! is read at each scrape.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;

use super::NodeInfo;
use immutant_foundation::shutdown::Shutdown;
use immutant_protocol::web::SECONDS_BUCKETS;

/// What each series is, as `# HELP` says it.
const COUNTERS: [(&str, &str); 14] = [
    (
        "immutant_messages_published_total",
        "Messages put in a queue (published or dead-lettered to it)",
    ),
    (
        "immutant_messages_delivered_total",
        "Messages a consumer took (acknowledged)",
    ),
    (
        "immutant_messages_redelivered_total",
        "Deliveries that failed and were put back in line",
    ),
    (
        "immutant_messages_dead_lettered_total",
        "Messages moved to /queue/DLQ after their last delivery",
    ),
    (
        "immutant_messages_expired_total",
        "Messages dropped as their time to live ran out",
    ),
    (
        "immutant_cache_operations_total",
        "Operations apps of this node made on a cache",
    ),
    (
        "immutant_cache_hits_total",
        "Reads that found an entry on this node",
    ),
    (
        "immutant_cache_misses_total",
        "Reads that found no entry on this node",
    ),
    (
        "immutant_job_firings_total",
        "Times a job fired on this node",
    ),
    (
        "immutant_job_misfires_total",
        "Firings later than the misfire threshold (run once, now)",
    ),
    (
        "immutant_singleton_handovers_total",
        "Times this node took over an app's singletons",
    ),
    (
        "immutant_cache_primary_handovers_total",
        "Times this node took over a cache's writes as its primary",
    ),
    (
        "immutant_app_restarts_total",
        "Times an app's process was restarted after it ended",
    ),
    (
        "immutant_http_requests_total",
        "Web requests answered, by context and status",
    ),
];
const GAUGES: [(&str, &str); 8] = [
    (
        "immutant_node_resident_memory_bytes",
        "The node's resident memory, its apps' not included",
    ),
    (
        "immutant_cluster_view_size",
        "Members in the cluster view this node sees",
    ),
    (
        "immutant_queue_depth",
        "Messages waiting in a queue, in memory and in the journal",
    ),
    (
        "immutant_queue_in_flight",
        "Messages delivered and not yet acknowledged",
    ),
    (
        "immutant_queue_consumers",
        "Consumers of a queue on this node",
    ),
    ("immutant_cache_hit_ratio", "Hits over reads on this node"),
    (
        "immutant_cache_entries",
        "Entries of a cache held on this node",
    ),
    ("immutant_node_uptime_seconds", "How long the node has run"),
];
const HISTOGRAMS: [(&str, &str); 4] = [
    (
        "immutant_journal_commit_seconds",
        "How long a journal transaction took to commit and sync",
    ),
    (
        "immutant_job_lateness_seconds",
        "How late after its due time a job fired",
    ),
    (
        "immutant_link_round_trip_seconds",
        "A cache call's round trip to another member",
    ),
    (
        "immutant_http_request_seconds",
        "Time to a web request's response head",
    ),
];

/// Series not touched for this long (a queue, cache or app that went) are no longer shown.
const IDLE: Duration = Duration::from_secs(300);

/// The process's recorder: installed by the first node of the process (there is one node to a
/// process but in tests), none if another recorder was installed first.
pub fn install(shutdown: &Shutdown) -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    let handle = HANDLE
        .get_or_init(|| {
            let installed = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
                .map(|builder| builder.idle_timeout(MetricKindMask::ALL, Some(IDLE)))
                .and_then(PrometheusBuilder::install_recorder);
            match installed {
                Ok(handle) => {
                    for (name, help) in COUNTERS {
                        metrics::describe_counter!(name, help);
                    }
                    for (name, help) in GAUGES {
                        metrics::describe_gauge!(name, help);
                    }
                    for (name, help) in HISTOGRAMS {
                        metrics::describe_histogram!(name, help);
                    }
                    Some(handle)
                }
                Err(error) => {
                    tracing::warn!("no metrics: {error}");
                    None
                }
            }
        })
        .clone()?;
    // Histograms' samples are folded into their buckets now and then, scraped or not.
    let upkeep = (handle.clone(), shutdown.clone());
    tokio::spawn(async move {
        let (handle, shutdown) = upkeep;
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = every.tick() => handle.run_upkeep(),
                _ = shutdown.cancelled() => return,
            }
        }
    });
    Some(handle)
}

/// The metrics as Prometheus reads them, the states read now.
pub fn render(info: &NodeInfo) -> Option<String> {
    let handle = info.metrics.as_ref()?;
    gauge!("immutant_node_uptime_seconds").set(info.started.elapsed().as_secs_f64());
    if let Some(bytes) = super::status::resident_memory() {
        gauge!("immutant_node_resident_memory_bytes").set(bytes as f64);
    }
    if let Some(view) = info.engine.membership.view() {
        gauge!("immutant_cluster_view_size").set(view.borrow().members.len() as f64);
    }
    for queue in info.engine.messaging.stats() {
        let label = || [("queue", queue.name.clone())];
        counter!("immutant_messages_published_total", &label()).absolute(queue.published);
        counter!("immutant_messages_delivered_total", &label()).absolute(queue.delivered);
        counter!("immutant_messages_redelivered_total", &label()).absolute(queue.redelivered);
        counter!("immutant_messages_dead_lettered_total", &label()).absolute(queue.dead_lettered);
        counter!("immutant_messages_expired_total", &label()).absolute(queue.expired);
        gauge!("immutant_queue_depth", &label()).set(queue.depth as f64);
        gauge!("immutant_queue_in_flight", &label()).set(queue.in_flight as f64);
        gauge!("immutant_queue_consumers", &label()).set(queue.consumers as f64);
    }
    for cache in info.engine.caches.stats() {
        let label = || [("cache", cache.name.clone())];
        counter!("immutant_cache_hits_total", &label()).absolute(cache.hits);
        counter!("immutant_cache_misses_total", &label()).absolute(cache.misses);
        gauge!("immutant_cache_entries", &label()).set(cache.entries as f64);
        let reads = cache.hits + cache.misses;
        if reads > 0 {
            gauge!("immutant_cache_hit_ratio", &label()).set(cache.hits as f64 / reads as f64);
        }
    }
    Some(handle.render())
}
