//! How the broker is observed from outside: logs, OpenTelemetry export, and the admin HTTP
//! endpoint.
//!
//! What it is:
//! - [`init`] installs the process's `tracing` subscriber: text or JSON lines on stderr and,
//!   when the standard `OTEL_*` variables ask for it, a `tracing-opentelemetry` layer with an
//!   OTLP/gRPC span exporter plus an OTLP/gRPC metric exporter. [`Telemetry::shutdown`]
//!   flushes both.
//! - [`register_metrics`] connects [`Metrics`] to the router's stored-state gauges and exposes
//!   the whole snapshot to OTLP as observable instruments, so OTLP reads the same atomics the
//!   Prometheus endpoint reads and the hot path is not instrumented twice.
//! - [`start_admin`] serves `/metrics` (Prometheus text format 0.0.4), `/healthz` and `/readyz`.
//!
//! What it is not: it counts nothing and judges no health itself (that is [`Metrics`],
//! [`Health`] and the code that updates them), it exports no logs over OTLP (logs go to
//! stderr), and it puts no span on per-message paths.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Key, KeyValue, global};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use parking_lot::Mutex;
use tracing::{info, warn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::health::Health;
use crate::metrics::{Kind, Metrics, Snapshot};
use crate::router::LocalRouter;

/// `service.name` unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` says otherwise.
pub const DEFAULT_SERVICE_NAME: &str = "gatehouse";

/// The Content-Type of the Prometheus text exposition format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long shutdown waits for the exporters to flush before the process exits anyway.
const EXPORT_SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// Crates that the OTLP exporter itself runs through. Their spans must not reach the
/// OpenTelemetry layer: exporting them would produce more of them, forever.
const EXPORTER_TARGETS: &[&str] = &[
    "h2",
    "hyper",
    "hyper_util",
    "tonic",
    "tower",
    "opentelemetry",
    "opentelemetry_sdk",
    "opentelemetry_otlp",
];

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// How to log, as the command line and the configuration say.
#[derive(Clone, Debug, Default)]
pub struct LogOptions {
    pub format: LogFormat,
    /// `--log`: a tracing EnvFilter. Wins over everything else.
    pub filter: Option<String>,
    /// `Broker.spec.diagnostics.logs.level`.
    pub configured_level: Option<String>,
}

impl LogOptions {
    /// The filter in force: `--log`, else the configured level, else `RUST_LOG`, else `info`.
    pub fn filter_spec(&self) -> String {
        self.filter
            .clone()
            .or_else(|| self.configured_level.clone())
            .or_else(|| {
                std::env::var("RUST_LOG")
                    .ok()
                    .filter(|v| !v.trim().is_empty())
            })
            .unwrap_or_else(|| "info".to_string())
    }
}

/// Which OTLP signals the environment turns on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OtlpSettings {
    pub traces: bool,
    pub metrics: bool,
    /// Settings we read but cannot honour, to log once the logger exists.
    pub warnings: Vec<String>,
}

impl OtlpSettings {
    /// Read the standard OpenTelemetry variables through `env` (a parameter so tests need not
    /// touch the process environment). A signal is exported when an endpoint for it is set
    /// (`OTEL_EXPORTER_OTLP_ENDPOINT` or the signal's own `..._TRACES_ENDPOINT` /
    /// `..._METRICS_ENDPOINT`), unless `OTEL_SDK_DISABLED=true` or `OTEL_{TRACES,METRICS}_EXPORTER=none`.
    /// Without an endpoint nothing is exported: silently sending to localhost:4317 (the SDK's
    /// default) would surprise an operator who never asked for OTLP.
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> OtlpSettings {
        let set = |k: &str| env(k).is_some_and(|v| !v.trim().is_empty());
        let is =
            |k: &str, value: &str| env(k).is_some_and(|v| v.trim().eq_ignore_ascii_case(value));
        if is("OTEL_SDK_DISABLED", "true") {
            return OtlpSettings::default();
        }
        let any = set("OTEL_EXPORTER_OTLP_ENDPOINT");
        let traces = (any || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
            && !is("OTEL_TRACES_EXPORTER", "none");
        let metrics = (any || set("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"))
            && !is("OTEL_METRICS_EXPORTER", "none");
        let mut warnings = Vec::new();
        if traces || metrics {
            for var in [
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
            ] {
                if let Some(p) = env(var).filter(|p| !p.trim().eq_ignore_ascii_case("grpc")) {
                    warnings.push(format!(
                        "{var}={p} is not supported by this build; exporting with OTLP/gRPC"
                    ));
                }
            }
        }
        OtlpSettings {
            traces,
            metrics,
            warnings,
        }
    }
}

/// The exporters [`init`] started. Call [`Telemetry::shutdown`] before the process exits, or
/// the last spans and metric values are lost.
#[must_use = "shut the exporters down on exit to flush them"]
#[derive(Default)]
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
}

impl Telemetry {
    pub fn exports_traces(&self) -> bool {
        self.tracer.is_some()
    }

    pub fn exports_metrics(&self) -> bool {
        self.meter.is_some()
    }

    /// Flush and stop the exporters. Bounded: an unreachable collector delays exit by at most
    /// [`EXPORT_SHUTDOWN_WAIT`].
    pub async fn shutdown(self) {
        if self.tracer.is_none() && self.meter.is_none() {
            return;
        }
        // The SDK's shutdown blocks until the last export finished, and that export needs
        // this runtime (the gRPC channel lives on it): block another thread, not this one.
        let job = tokio::task::spawn_blocking(move || {
            let mut errors = Vec::new();
            if let Some(tp) = self.tracer
                && let Err(e) = tp.shutdown()
            {
                errors.push(format!("spans: {e}"));
            }
            if let Some(mp) = self.meter
                && let Err(e) = mp.shutdown()
            {
                errors.push(format!("metrics: {e}"));
            }
            errors
        });
        match tokio::time::timeout(EXPORT_SHUTDOWN_WAIT, job).await {
            Ok(Ok(errors)) => {
                for e in errors {
                    warn!("OTLP exporter shutdown: {e}");
                }
            }
            Ok(Err(e)) => warn!("OTLP exporter shutdown panicked: {e}"),
            Err(_) => warn!(
                "OTLP exporters did not flush within {EXPORT_SHUTDOWN_WAIT:?}; exiting anyway"
            ),
        }
    }
}

/// Install logging, and OTLP export when the environment asks for it (see
/// [`OtlpSettings::from_env`]). Call once, early, inside the tokio runtime that will keep
/// running for the process's life (the broker's actix System): the exporters' gRPC channel is
/// created on it and needs it to make progress.
pub fn init(options: &LogOptions) -> Telemetry {
    let settings = OtlpSettings::from_env(|k| std::env::var(k).ok());
    let mut problems = settings.warnings.clone();
    let resource = (settings.traces || settings.metrics).then(resource);

    let tracer = match (&resource, settings.traces) {
        (Some(resource), true) => {
            match opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build()
            {
                Ok(exporter) => Some(
                    SdkTracerProvider::builder()
                        .with_batch_exporter(exporter)
                        .with_resource(resource.clone())
                        .build(),
                ),
                Err(e) => {
                    problems.push(format!("OTLP span exporter not started: {e}"));
                    None
                }
            }
        }
        _ => None,
    };
    let meter = match (&resource, settings.metrics) {
        (Some(resource), true) => {
            match opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .build()
            {
                // The periodic reader honours OTEL_METRIC_EXPORT_INTERVAL itself.
                Ok(exporter) => Some(
                    SdkMeterProvider::builder()
                        .with_periodic_exporter(exporter)
                        .with_resource(resource.clone())
                        .build(),
                ),
                Err(e) => {
                    problems.push(format!("OTLP metric exporter not started: {e}"));
                    None
                }
            }
        }
        _ => None,
    };
    if let Some(mp) = &meter {
        global::set_meter_provider(mp.clone());
    }
    if let Some(tp) = &tracer {
        global::set_tracer_provider(tp.clone());
    }

    let spec = options.filter_spec();
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = vec![match options.format {
        LogFormat::Text => fmt.with_filter(EnvFilter::new(&spec)).boxed(),
        LogFormat::Json => fmt.json().with_filter(EnvFilter::new(&spec)).boxed(),
    }];
    if let Some(tp) = &tracer {
        let exporter_off: String = EXPORTER_TARGETS
            .iter()
            .map(|t| format!(",{t}=off"))
            .collect();
        layers.push(
            tracing_opentelemetry::layer()
                .with_tracer(tp.tracer(DEFAULT_SERVICE_NAME))
                .with_filter(EnvFilter::new(format!("{spec}{exporter_off}")))
                .boxed(),
        );
    }
    // Fails only if a subscriber is already installed (tests calling init twice); the first
    // one keeps working.
    let _ = tracing_subscriber::registry().with(layers).try_init();

    for p in problems {
        warn!("{p}");
    }
    if tracer.is_some() || meter.is_some() {
        info!(
            traces = tracer.is_some(),
            metrics = meter.is_some(),
            "exporting telemetry over OTLP/gRPC"
        );
    }
    Telemetry { tracer, meter }
}

/// The SDK's resource (which reads `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`), with
/// our service name instead of the SDK's `unknown_service` fallback.
fn resource() -> Resource {
    let detected = Resource::builder().build();
    let named = detected
        .get(&Key::from_static_str("service.name"))
        .is_some_and(|v| !v.as_str().starts_with("unknown_service"));
    let builder = if named {
        Resource::builder()
    } else {
        Resource::builder().with_service_name(DEFAULT_SERVICE_NAME)
    };
    builder
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Connect `metrics` to the router's stored-state gauges and publish every metric as an OTLP
/// observable instrument on the global meter (a no-op meter unless [`init`] started OTLP
/// metric export). Call once, when the router exists.
pub fn register_metrics(metrics: &Arc<Metrics>, router: &Arc<LocalRouter>) {
    // Weak: the router holds the metrics, so a strong reference back would be a cycle.
    let router = Arc::downgrade(router);
    metrics.set_store_source(move || router.upgrade().map(|r| r.stats()));

    let meter = global::meter(DEFAULT_SERVICE_NAME);
    let cache = Arc::new(SnapshotCache::new(metrics.clone()));
    for family in metrics.snapshot().families {
        let (name, help) = (family.name, family.help);
        let cache = cache.clone();
        match family.kind {
            Kind::Counter => {
                meter
                    .u64_observable_counter(name)
                    .with_description(help)
                    .with_callback(move |observer| {
                        for s in cache.series(name) {
                            observer.observe(s.value.max(0) as u64, &s.labels);
                        }
                    })
                    .build();
            }
            Kind::Gauge => {
                meter
                    .i64_observable_gauge(name)
                    .with_description(help)
                    .with_callback(move |observer| {
                        for s in cache.series(name) {
                            observer.observe(s.value, &s.labels);
                        }
                    })
                    .build();
            }
        }
    }
}

struct OtelSeries {
    labels: Vec<KeyValue>,
    value: i64,
}

/// The OTLP reader calls one callback per instrument, back to back. Taking a snapshot in each
/// would lock the router once per gauge; instead the first callback of a collection takes it
/// and the others reuse it.
struct SnapshotCache {
    metrics: Arc<Metrics>,
    last: Mutex<Option<(Instant, Arc<Snapshot>)>>,
}

impl SnapshotCache {
    /// Far shorter than any sensible export interval, far longer than one collection.
    const MAX_AGE: Duration = Duration::from_millis(250);

    fn new(metrics: Arc<Metrics>) -> SnapshotCache {
        SnapshotCache {
            metrics,
            last: Mutex::new(None),
        }
    }

    fn series(&self, name: &str) -> Vec<OtelSeries> {
        let snapshot = {
            let mut last = self.last.lock();
            match &*last {
                Some((at, s)) if at.elapsed() < Self::MAX_AGE => s.clone(),
                _ => {
                    let s = Arc::new(self.metrics.snapshot());
                    *last = Some((Instant::now(), s.clone()));
                    s
                }
            }
        };
        snapshot
            .family(name)
            .map(|f| {
                f.series
                    .iter()
                    .map(|s| OtelSeries {
                        labels: s
                            .labels
                            .iter()
                            .map(|(k, v)| KeyValue::new(*k, v.clone()))
                            .collect(),
                        value: s.value,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A snapshot in the Prometheus text exposition format 0.0.4, with HELP and TYPE lines.
pub fn render_prometheus(snapshot: &Snapshot) -> String {
    let mut out = String::with_capacity(snapshot.families.len() * 160);
    for f in &snapshot.families {
        let kind = match f.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let help = f.help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(out, "# HELP {} {help}", f.name);
        let _ = writeln!(out, "# TYPE {} {kind}", f.name);
        for s in &f.series {
            out.push_str(f.name);
            if !s.labels.is_empty() {
                out.push('{');
                for (i, (k, v)) in s.labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let v = v
                        .replace('\\', "\\\\")
                        .replace('"', "\\\"")
                        .replace('\n', "\\n");
                    let _ = write!(out, "{k}=\"{v}\"");
                }
                out.push('}');
            }
            let _ = writeln!(out, " {}", s.value);
        }
    }
    out
}

#[derive(Clone)]
struct AdminState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// The admin endpoint's routes, without a socket.
pub fn admin_router(metrics: Arc<Metrics>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AdminState { metrics, health })
}

async fn metrics_page(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)],
        render_prometheus(&state.metrics.snapshot()),
    )
}

/// Answering at all is the check: the handler runs on the broker's main runtime, so a wedged
/// runtime gets no answer and the probe times out.
async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AdminState>) -> (StatusCode, String) {
    match state.health.ready() {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(why) => {
            let mut body = "not ready:\n".to_string();
            for w in why {
                body.push_str(&w);
                body.push('\n');
            }
            (StatusCode::SERVICE_UNAVAILABLE, body)
        }
    }
}

/// Bind the admin endpoint on `addr` and serve it on the current tokio runtime for the rest of
/// the process's life. Returns the bound address (useful with port 0).
pub async fn start_admin(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = admin_router(metrics, health);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!(error = %e, "admin endpoint stopped");
        }
    });
    info!(%local, "admin endpoint: /metrics, /healthz, /readyz");
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::PortState;
    use crate::metrics::{Family, Series};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn otlp_is_off_without_an_endpoint() {
        assert_eq!(OtlpSettings::from_env(env(&[])), OtlpSettings::default());
        let s = OtlpSettings::from_env(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]));
        assert!(!s.traces && !s.metrics);
    }

    #[test]
    fn otlp_endpoints_turn_signals_on_one_by_one() {
        let both = OtlpSettings::from_env(env(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://127.0.0.1:4317",
        )]));
        assert!(both.traces && both.metrics);
        let traces = OtlpSettings::from_env(env(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://127.0.0.1:4317",
        )]));
        assert!(traces.traces && !traces.metrics);
        let metrics = OtlpSettings::from_env(env(&[(
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            "http://127.0.0.1:4317",
        )]));
        assert!(!metrics.traces && metrics.metrics);
    }

    #[test]
    fn otlp_sdk_disabled_and_exporter_none_win() {
        let ep = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317");
        let off = OtlpSettings::from_env(env(&[ep, ("OTEL_SDK_DISABLED", "TRUE")]));
        assert!(!off.traces && !off.metrics);
        let no_traces = OtlpSettings::from_env(env(&[ep, ("OTEL_TRACES_EXPORTER", "none")]));
        assert!(!no_traces.traces && no_traces.metrics);
        let no_metrics = OtlpSettings::from_env(env(&[ep, ("OTEL_METRICS_EXPORTER", "none")]));
        assert!(no_metrics.traces && !no_metrics.metrics);
        let still_on = OtlpSettings::from_env(env(&[ep, ("OTEL_SDK_DISABLED", "false")]));
        assert!(still_on.traces && still_on.metrics);
    }

    #[test]
    fn otlp_http_protocol_is_reported_not_silently_ignored() {
        let s = OtlpSettings::from_env(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ]));
        assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
        assert!(s.warnings[0].contains("http/protobuf"));
    }

    #[test]
    fn log_filter_precedence() {
        let mut o = LogOptions {
            filter: Some("debug".into()),
            configured_level: Some("warn".into()),
            ..LogOptions::default()
        };
        assert_eq!(o.filter_spec(), "debug");
        o.filter = None;
        assert_eq!(o.filter_spec(), "warn");
    }

    fn family(name: &'static str, kind: Kind, series: Vec<Series>) -> Family {
        Family {
            name,
            help: "What it counts.",
            kind,
            series,
        }
    }

    #[test]
    fn prometheus_text_has_help_type_and_samples() {
        let snapshot = Snapshot {
            families: vec![
                family(
                    "aio_broker_publishes_received",
                    Kind::Counter,
                    vec![Series {
                        labels: vec![],
                        value: 3,
                    }],
                ),
                family(
                    "aio_broker_connected_sessions",
                    Kind::Gauge,
                    vec![Series {
                        labels: vec![],
                        value: 0,
                    }],
                ),
            ],
        };
        assert_eq!(
            render_prometheus(&snapshot),
            "# HELP aio_broker_publishes_received What it counts.\n\
             # TYPE aio_broker_publishes_received counter\n\
             aio_broker_publishes_received 3\n\
             # HELP aio_broker_connected_sessions What it counts.\n\
             # TYPE aio_broker_connected_sessions gauge\n\
             aio_broker_connected_sessions 0\n"
        );
    }

    #[test]
    fn prometheus_labels_are_escaped_and_empty_families_keep_their_header() {
        let snapshot = Snapshot {
            families: vec![
                family(
                    "gatehouse_server_disconnects",
                    Kind::Counter,
                    vec![Series {
                        labels: vec![
                            ("reason_code", "0x8E".into()),
                            ("reason", "a \"quoted\\\" \nline".into()),
                        ],
                        value: 2,
                    }],
                ),
                family("gatehouse_protocol_violations", Kind::Counter, vec![]),
            ],
        };
        let text = render_prometheus(&snapshot);
        assert!(
            text.contains(
                "gatehouse_server_disconnects{reason_code=\"0x8E\",reason=\"a \\\"quoted\\\\\\\" \\nline\"} 2\n"
            ),
            "{text}"
        );
        assert!(text.ends_with("# TYPE gatehouse_protocol_violations counter\n"));
    }

    #[test]
    fn every_metric_of_a_real_snapshot_renders_with_a_header() {
        let m = Metrics::default();
        m.publish_received(5);
        m.server_disconnect(mqtt::ReasonCode::SESSION_TAKEN_OVER);
        let snapshot = m.snapshot();
        let text = render_prometheus(&snapshot);
        for f in &snapshot.families {
            assert!(text.contains(&format!("# HELP {} ", f.name)), "{}", f.name);
            assert!(text.contains(&format!("# TYPE {} ", f.name)), "{}", f.name);
        }
        assert!(text.contains("\naio_broker_publishes_received 1\n"));
        assert!(text.contains("\naio_broker_payload_bytes_received 5\n"));
        // Every sample line is `name[{labels}] integer`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').expect(line);
            value.parse::<i64>().expect(line);
        }
    }

    /// GET over a real socket with HTTP/1.0, so the response is not chunked and the server
    /// closes when done.
    async fn http_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut raw = String::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut raw))
            .await
            .expect("response in time")
            .unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").expect("header end");
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, head.to_string(), body.to_string())
    }

    async fn admin() -> (SocketAddr, Arc<Metrics>, Arc<Health>) {
        let metrics = Arc::new(Metrics::default());
        let health = Arc::new(Health::default());
        let addr = start_admin(
            "127.0.0.1:0".parse().unwrap(),
            metrics.clone(),
            health.clone(),
        )
        .await
        .unwrap();
        (addr, metrics, health)
    }

    #[tokio::test]
    async fn metrics_endpoint_serves_the_snapshot_as_prometheus_text() {
        let (addr, metrics, _) = admin().await;
        metrics.publish_received(10);
        let (status, head, body) = http_get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
        assert_eq!(body, render_prometheus(&metrics.snapshot()));
        assert!(
            body.contains("\naio_broker_publishes_received 1\n"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn healthz_answers_ok() {
        let (addr, _, _) = admin().await;
        assert_eq!(http_get(addr, "/healthz").await.0, 200);
        assert_eq!(http_get(addr, "/healthz").await.2, "ok\n");
        assert_eq!(http_get(addr, "/nope").await.0, 404);
    }

    #[tokio::test]
    async fn readyz_follows_health_and_lists_waiting_ports() {
        let (addr, _, health) = admin().await;
        // Nothing registered yet: nothing to wait for.
        assert_eq!(http_get(addr, "/readyz").await.0, 200);
        health.set("default", 1883, PortState::Serving);
        health.set(
            "secure",
            8883,
            PortState::Waiting("certificate not found".into()),
        );
        let (status, _, body) = http_get(addr, "/readyz").await;
        assert_eq!(status, 503);
        assert!(
            body.contains("secure:8883: certificate not found"),
            "{body}"
        );
        assert!(!body.contains("default"), "{body}");
        health.set("secure", 8883, PortState::Serving);
        assert_eq!(http_get(addr, "/readyz").await.0, 200);
        // SIGTERM: not ready while the broker drains, though every port still serves.
        health.begin_shutdown();
        let (status, _, body) = http_get(addr, "/readyz").await;
        assert_eq!(
            (status, body.as_str()),
            (503, "not ready:\nshutting down\n")
        );
        assert_eq!(http_get(addr, "/healthz").await.0, 200, "still alive");
    }
}
