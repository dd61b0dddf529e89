//! What `/metrics` serves: Prometheus metrics kept with `prometheus-client`, the Prometheus
//! project's own Rust client (typed label sets, so every label's values are a closed set in
//! the code; a small dependency tree).
//!
//! One set per process ([`metrics`]), updated where things happen (each operation's recorder in
//! [`crate::graphql::telemetry`], the pool's statement callback, the event bus, the runner
//! protocol, admission), plus gauges read at scrape time ([`Scrape`]): the pool, WebSocket
//! occupancy, and deployments by status from the database.
//!
//! Label values stay bounded whatever clients send, so a scrape stays under 1 MB: an
//! operation is labelled with the name its document gives it (never the request's
//! `operationName` alone), `anonymous` when it has none; a name longer than
//! [`MAX_OPERATION_NAME_CHARS`], or new once [`MAX_OPERATION_NAMES`] names are kept (names of
//! trusted documents, which operators store, do not count), is `other`; so is a new
//! combination once a family holds its most series ([`MAX_REQUEST_SERIES`],
//! [`MAX_DURATION_SERIES`]). Outcomes are the closed set of error codes, stages and
//! statuses are enums, runners are token names (made by admins).

use std::collections::{HashMap, HashSet};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use entity::deployment_run::Stage;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use sea_orm::ActiveEnum;

/// Distinct operation names from clients' documents kept as label values; later names
/// count as `other`.
pub const MAX_OPERATION_NAMES: usize = 100;
/// The longest operation name used as a label value; longer ones count as `other`.
pub const MAX_OPERATION_NAME_CHARS: usize = 64;
/// Series of `keystone_graphql_requests_total` (operation, type, outcome) kept; a new
/// combination beyond them counts under `other`.
pub const MAX_REQUEST_SERIES: usize = 1000;
/// Series of `keystone_graphql_request_duration_seconds` (operation, type) kept; beyond
/// them, under `other`.
pub const MAX_DURATION_SERIES: usize = 200;
/// Deployments whose current stage is timed at once (beyond: not timed).
const MAX_TIMED_DEPLOYMENTS: usize = 10_000;

/// Seconds: 1 ms to 10 s for requests and statements.
const LATENCY_BUCKETS: [f64; 14] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Seconds: 1 s to 30 min for deployment stages (clone, build…).
const STAGE_BUCKETS: [f64; 10] = [1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0];

fn latency() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

fn stage_time() -> Histogram {
    Histogram::new(STAGE_BUCKETS)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    operation: String,
    r#type: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: String,
    r#type: &'static str,
}

macro_rules! one_label {
    ($name:ident, $label:ident) => {
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct $name {
            $label: &'static str,
        }
    };
}
one_label!(StateLabel, state);
one_label!(KindLabel, kind);
one_label!(WhereLabel, r#where);
one_label!(ReasonLabel, reason);
one_label!(OutcomeLabel, outcome);

/// Deployment statuses and stages are labelled as the database stores them.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabel {
    stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunnerLabel {
    runner: String,
}

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_seconds: Family<OperationLabels, Histogram, fn() -> Histogram>,
    operation_names: Mutex<HashSet<String>>,
    /// The series of `requests` and `request_seconds`, counted against their caps.
    series: Mutex<(HashSet<RequestLabels>, HashSet<OperationLabels>)>,
    statements: Counter,
    statement_seconds: Histogram,
    pool_connections: Family<StateLabel, Gauge>,
    pool_timeouts: Counter,
    websocket_connections: Gauge,
    subscriptions: Gauge,
    events_published: Family<KindLabel, Counter>,
    events_dropped: Family<WhereLabel, Counter>,
    event_listener_connected: Gauge,
    deployments: Family<StatusLabel, Gauge>,
    oldest_queued_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    leases_lapsed: Family<OutcomeLabel, Counter>,
    heartbeats: Family<RunnerLabel, Counter>,
    stage_seconds: Family<StageLabel, Histogram, fn() -> Histogram>,
    stages: Mutex<HashMap<i64, (Stage, Instant)>>,
    /// Held while a scrape sets the scrape-time gauges and encodes them, so two scrapes at
    /// once cannot see each other's half-set families.
    scraping: Mutex<()>,
    rate_limited: Counter,
    authentication_failures: Family<ReasonLabel, Counter>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

tokio::task_local! {
    static UNMEASURED: ();
}

/// Runs `work` (the scrape's own reads) without counting its statements, so that
/// `keystone_sql_statements_total` counts the statements run for clients alone (the bench
/// and the tests read statements per request from it).
pub async fn unmeasured<F: std::future::Future>(work: F) -> F::Output {
    UNMEASURED.scope((), work).await
}

/// This process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// How an operation ended, for the `outcome` label: `ok`, or the first error's code.
pub type Outcome = &'static str;

/// The label of operations that cannot have their own (see the module's doc).
const OTHER: &str = "other";

/// Where an operation's name comes from, for its label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OperationName {
    /// The operation has no name.
    Anonymous,
    /// No operation was selected (the document did not parse, or has no such operation).
    Unknown,
    /// A name in a trusted document, stored by an operator.
    Trusted(String),
    /// A name in a document a client sent.
    Client(String),
}

impl Metrics {
    fn new() -> Self {
        let metrics = Self {
            registry: Registry::default(),
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(latency),
            operation_names: Mutex::default(),
            series: Mutex::default(),
            statements: Counter::default(),
            statement_seconds: latency(),
            pool_connections: Family::default(),
            pool_timeouts: Counter::default(),
            websocket_connections: Gauge::default(),
            subscriptions: Gauge::default(),
            events_published: Family::default(),
            events_dropped: Family::default(),
            event_listener_connected: Gauge::default(),
            deployments: Family::default(),
            oldest_queued_seconds: Gauge::default(),
            leases_lapsed: Family::default(),
            heartbeats: Family::default(),
            stage_seconds: Family::new_with_constructor(stage_time),
            stages: Mutex::default(),
            scraping: Mutex::default(),
            rate_limited: Counter::default(),
            authentication_failures: Family::default(),
        };
        let mut registry = Registry::default();
        let r = &mut registry;
        r.register(
            "keystone_graphql_requests",
            "GraphQL operations answered (HTTP and WebSocket), by operation name, type (query, mutation, subscription; unknown when the document did not parse) and outcome (ok or the first error's code); a subscription counts when it ends",
            metrics.requests.clone(),
        );
        r.register(
            "keystone_graphql_request_duration_seconds",
            "Time to answer a query or mutation, admission excluded",
            metrics.request_seconds.clone(),
        );
        r.register(
            "keystone_sql_statements",
            "SQL statements run by the server's pool",
            metrics.statements.clone(),
        );
        r.register(
            "keystone_sql_statement_duration_seconds",
            "Time the database took for one statement",
            metrics.statement_seconds.clone(),
        );
        r.register(
            "keystone_db_pool_connections",
            "The pool's connections: in_use or idle (read at scrape time)",
            metrics.pool_connections.clone(),
        );
        r.register(
            "keystone_db_pool_timeouts",
            "Waits for a pooled connection that ran out of time (answered 503)",
            metrics.pool_timeouts.clone(),
        );
        r.register(
            "keystone_websocket_connections",
            "WebSocket connections open",
            metrics.websocket_connections.clone(),
        );
        r.register(
            "keystone_graphql_subscriptions",
            "GraphQL operations running on WebSocket connections",
            metrics.subscriptions.clone(),
        );
        r.register(
            "keystone_events_published",
            "Change events published, by kind",
            metrics.events_published.clone(),
        );
        r.register(
            "keystone_events_dropped",
            "Events lost: outbox (the NOTIFY queue was full) or subscriber (a slow subscriber fell behind; it got EVENTS_DROPPED)",
            metrics.events_dropped.clone(),
        );
        r.register(
            "keystone_event_listener_connected",
            "1 while the PostgreSQL LISTEN connection is up (always 1 on SQLite: events are in-process)",
            metrics.event_listener_connected.clone(),
        );
        r.register(
            "keystone_deployments",
            "Deployments by status (read from the database at scrape time; queued is the queue depth)",
            metrics.deployments.clone(),
        );
        r.register(
            "keystone_deployment_queue_oldest_age_seconds",
            "Age of the oldest queued deployment (0 when none is queued)",
            metrics.oldest_queued_seconds.clone(),
        );
        r.register(
            "keystone_deployment_leases_lapsed",
            "Running deployments whose runner stopped heartbeating: requeued, or failed after the last attempt",
            metrics.leases_lapsed.clone(),
        );
        r.register(
            "keystone_runner_heartbeats",
            "Heartbeats accepted, by runner (token name)",
            metrics.heartbeats.clone(),
        );
        r.register(
            "keystone_deployment_stage_duration_seconds",
            "Time a deployment spent in a stage, from its runner's reports (timed by the instance that received them)",
            metrics.stage_seconds.clone(),
        );
        r.register(
            "keystone_rate_limited",
            "Requests refused by the rate limit",
            metrics.rate_limited.clone(),
        );
        r.register(
            "keystone_authentication_failures",
            "Requests refused for their token, by reason (missing, malformed, invalid, expired, unavailable; metrics: a scrape without the metrics token)",
            metrics.authentication_failures.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }

    /// The label value for an operation `name`: see the module's doc.
    pub fn operation_label(&self, name: &OperationName) -> String {
        let (name, counted) = match name {
            OperationName::Anonymous => return "anonymous".to_owned(),
            OperationName::Unknown => return OTHER.to_owned(),
            OperationName::Trusted(name) => (name.as_str(), false),
            OperationName::Client(name) => (name.as_str(), true),
        };
        if name.chars().count() > MAX_OPERATION_NAME_CHARS {
            return OTHER.to_owned();
        }
        if !counted {
            return name.to_owned();
        }
        let mut names = self
            .operation_names
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if names.contains(name) {
            return name.to_owned();
        }
        if names.len() < MAX_OPERATION_NAMES {
            names.insert(name.to_owned());
            return name.to_owned();
        }
        OTHER.to_owned()
    }

    /// An operation answered: `operation` is its label ([`Metrics::operation_label`]),
    /// `kind` is `query`, `mutation`, `subscription` or `unknown`; `elapsed` is recorded
    /// for queries and mutations.
    pub fn operation(
        &self,
        operation: String,
        kind: &'static str,
        outcome: Outcome,
        elapsed: Option<Duration>,
    ) {
        let mut request = RequestLabels {
            operation,
            r#type: kind,
            outcome,
        };
        let mut timed = OperationLabels {
            operation: request.operation.clone(),
            r#type: kind,
        };
        {
            let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
            let (requests, durations) = &mut *series;
            if !requests.contains(&request) {
                if requests.len() >= MAX_REQUEST_SERIES {
                    request.operation = OTHER.to_owned();
                }
                requests.insert(request.clone());
            }
            if elapsed.is_some() && !durations.contains(&timed) {
                if durations.len() >= MAX_DURATION_SERIES {
                    timed.operation = OTHER.to_owned();
                }
                durations.insert(timed.clone());
            }
        }
        if let Some(elapsed) = elapsed {
            self.request_seconds
                .get_or_create(&timed)
                .observe(elapsed.as_secs_f64());
        }
        self.requests.get_or_create(&request).inc();
    }

    /// A statement the pool ran; not counted inside [`unmeasured`].
    pub fn statement(&self, elapsed: Duration) {
        if UNMEASURED.try_with(|()| ()).is_ok() {
            return;
        }
        self.statements.inc();
        self.statement_seconds.observe(elapsed.as_secs_f64());
    }

    pub fn pool_timeout(&self) {
        self.pool_timeouts.inc();
    }

    pub fn event_published(&self, kind: &'static str) {
        self.events_published
            .get_or_create(&KindLabel { kind })
            .inc();
    }

    /// `place` is `outbox` or `subscriber`.
    pub fn events_dropped(&self, place: &'static str, count: u64) {
        self.events_dropped
            .get_or_create(&WhereLabel { r#where: place })
            .inc_by(count);
    }

    pub fn event_listener(&self, connected: bool) {
        self.event_listener_connected.set(i64::from(connected));
    }

    /// A lapsed lease: `outcome` is `requeued` or `failed`.
    pub fn lease_lapsed(&self, outcome: &'static str) {
        self.leases_lapsed
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// A heartbeat from `runner` on `deployment`, which reports `stage` (if any): the time
    /// in the previous stage is recorded when the stage changes.
    pub fn heartbeat(&self, runner: &str, deployment: i64, stage: Option<Stage>) {
        self.heartbeats
            .get_or_create(&RunnerLabel {
                runner: runner.to_owned(),
            })
            .inc();
        let Some(stage) = stage else { return };
        let mut stages = self.stages.lock().unwrap_or_else(|e| e.into_inner());
        match stages.get(&deployment) {
            Some((current, _)) if *current == stage => {}
            Some(&(previous, since)) => {
                self.observe_stage(previous, since);
                stages.insert(deployment, (stage, Instant::now()));
            }
            None if stages.len() < MAX_TIMED_DEPLOYMENTS => {
                stages.insert(deployment, (stage, Instant::now()));
            }
            None => {}
        }
    }

    /// A deployment ended (reported, cancelled or lapsed): its last stage's time is recorded.
    pub fn deployment_ended(&self, deployment: i64) {
        let ended = self
            .stages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&deployment);
        if let Some((stage, since)) = ended {
            self.observe_stage(stage, since);
        }
    }

    fn observe_stage(&self, stage: Stage, since: Instant) {
        let stage = stage.to_value();
        self.stage_seconds
            .get_or_create(&StageLabel { stage })
            .observe(since.elapsed().as_secs_f64());
    }

    pub fn rate_limited(&self) {
        self.rate_limited.inc();
    }

    /// `reason`: `missing`, `malformed`, `invalid`, `expired`, `unavailable`, or `metrics`
    /// (a scrape without the metrics token).
    pub fn authentication_failed(&self, reason: &'static str) {
        self.authentication_failures
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }
}

/// What the scrape reads at that moment.
pub struct Scrape {
    /// Pool connections in use and idle.
    pub pool: Option<(u32, u32)>,
    pub websocket_connections: usize,
    pub subscriptions: usize,
    /// Deployments by status, and the oldest queued one's age; `None` when the database
    /// cannot be read (the gauges are then left out).
    pub deployments: Option<(Vec<(entity::deployment::DeploymentStatus, i64)>, Duration)>,
}

impl Metrics {
    /// The Prometheus text exposition (version 0.0.4) of every metric, with `scrape`'s.
    pub fn render(&self, scrape: Scrape) -> String {
        let _scraping = self.scraping.lock().unwrap_or_else(|e| e.into_inner());
        self.pool_connections.clear();
        if let Some((in_use, idle)) = scrape.pool {
            let set = |state, value: u32| {
                self.pool_connections
                    .get_or_create(&StateLabel { state })
                    .set(i64::from(value));
            };
            set("in_use", in_use);
            set("idle", idle);
        }
        self.websocket_connections
            .set(scrape.websocket_connections as i64);
        self.subscriptions.set(scrape.subscriptions as i64);
        self.deployments.clear();
        match scrape.deployments {
            Some((counts, oldest)) => {
                use sea_orm::Iterable;
                for status in entity::deployment::DeploymentStatus::iter() {
                    let count = counts
                        .iter()
                        .find(|(s, _)| *s == status)
                        .map_or(0, |(_, n)| *n);
                    let status = status.to_value();
                    self.deployments
                        .get_or_create(&StatusLabel { status })
                        .set(count);
                }
                self.oldest_queued_seconds.set(oldest.as_secs_f64());
            }
            None => {
                self.oldest_queued_seconds.set(f64::NAN);
            }
        }
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        text
    }
}

/// The `Content-Type` of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[cfg(test)]
mod tests {
    use super::*;

    fn client(name: &str) -> OperationName {
        OperationName::Client(name.to_owned())
    }

    #[test]
    fn operation_names_are_bounded() {
        let metrics = Metrics::new();
        for n in 0..MAX_OPERATION_NAMES {
            assert_eq!(
                metrics.operation_label(&client(&format!("op{n}"))),
                format!("op{n}")
            );
        }
        assert_eq!(metrics.operation_label(&client("one_too_many")), "other");
        assert_eq!(metrics.operation_label(&client("op0")), "op0");
        assert_eq!(
            metrics.operation_label(&OperationName::Anonymous),
            "anonymous"
        );
        assert_eq!(metrics.operation_label(&OperationName::Unknown), "other");
        // Trusted documents' names do not count, and are kept beyond the cap.
        let trusted = OperationName::Trusted("StoredByAnOperator".to_owned());
        assert_eq!(metrics.operation_label(&trusted), "StoredByAnOperator");
        let long = "x".repeat(MAX_OPERATION_NAME_CHARS + 1);
        assert_eq!(metrics.operation_label(&client(&long)), "other");
        assert_eq!(
            metrics.operation_label(&OperationName::Trusted(long)),
            "other"
        );
    }

    fn empty_scrape() -> Scrape {
        Scrape {
            pool: Some((1, 1)),
            websocket_connections: 0,
            subscriptions: 0,
            deployments: None,
        }
    }

    /// Whatever names, types and outcomes clients cause, in whatever order, the scrape
    /// stays under 1 MB. The worst case is every name as long as allowed, each with every
    /// type and every outcome: the series caps hold it.
    #[test]
    fn the_scrape_stays_under_a_megabyte_whatever_clients_send() {
        use strum::IntoEnumIterator;
        let metrics = Metrics::new();
        let kinds = ["query", "mutation", "subscription", "unknown"];
        let outcomes: Vec<Outcome> = std::iter::once("ok")
            .chain(crate::graphql::error::Code::iter().map(|code| code.as_str()))
            .collect();
        for n in 0..(MAX_OPERATION_NAMES * 3) {
            let name = format!("{n:0>width$}", width = MAX_OPERATION_NAME_CHARS);
            let trusted = n % 2 == 0;
            let label = metrics.operation_label(&if trusted {
                OperationName::Trusted(name)
            } else {
                client(&name)
            });
            for kind in kinds {
                for outcome in &outcomes {
                    metrics.operation(label.clone(), kind, outcome, Some(Duration::from_millis(3)));
                }
            }
        }
        let text = metrics.render(empty_scrape());
        assert!(
            text.len() < 1 << 20,
            "{} bytes, {} lines",
            text.len(),
            text.lines().count()
        );
    }

    #[test]
    fn a_stage_is_timed_until_the_next_one_or_the_end() {
        let metrics = Metrics::new();
        metrics.heartbeat("r", 1, Some(Stage::Clone));
        metrics.heartbeat("r", 1, Some(Stage::Clone));
        metrics.heartbeat("r", 1, Some(Stage::Build));
        metrics.deployment_ended(1);
        metrics.deployment_ended(1);
        let text = metrics.render(empty_scrape());
        for stage in ["clone", "build"] {
            let line =
                format!("keystone_deployment_stage_duration_seconds_count{{stage=\"{stage}\"}} 1");
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert!(metrics.stages.lock().unwrap().is_empty());
    }
}
