//! Observability of the real binary, end to end: the admin endpoint's `/metrics` (counters move
//! by exactly what the clients did), `/healthz` and `/readyz`; OTLP export of the `mqtt.connect`
//! span and the broker's metrics to an in-process OTLP/gRPC receiver, both periodically and as
//! a flush on graceful shutdown; and no CONNECT password in debug/trace JSON logs.
//!
//! Not the place for the exposition format's details or the OTEL_* variable rules: those are
//! unit tests in `frontend::observability`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e::broker::DEFAULT_LISTENER;
use e2e::raw::{connect_v5, connect_v311, publish, will};
use e2e::{Broker, RawClient, Recv, WAIT, unique_id};
use mqtt::{QoS, ReasonCode};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};

const ADMIN_ON_LOOPBACK: &[&str] = &["--admin-listen", "127.0.0.1:0"];

// ---- a plain HTTP/1.0 client (no chunked bodies; the server closes when done) ---------------

struct HttpResponse {
    status: u16,
    head: String,
    body: String,
}

fn http_get(addr: SocketAddr, path: &str) -> HttpResponse {
    let mut s = TcpStream::connect_timeout(&addr, WAIT).expect("connect to the admin endpoint");
    s.set_read_timeout(Some(WAIT)).expect("read timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: gatehouse\r\n\r\n").expect("send request");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read response");
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {raw:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    HttpResponse {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

fn admin_addr(broker: &Broker) -> SocketAddr {
    let admin = broker
        .ready_ports()
        .iter()
        .find(|p| p.listener == "admin")
        .unwrap_or_else(|| {
            panic!(
                "no admin line in the ready file: {:?}",
                broker.ready_ports()
            )
        });
    assert_eq!(admin.port, 0, "the configured port");
    admin.local_addr
}

/// Every sample of a Prometheus text page, keyed by `name` or `name{labels}` as written.
fn samples(text: &str) -> BTreeMap<String, i64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            let value = value
                .parse()
                .unwrap_or_else(|e| panic!("bad value in {l:?}: {e}"));
            (series.to_string(), value)
        })
        .collect()
}

fn scrape(admin: SocketAddr) -> BTreeMap<String, i64> {
    let r = http_get(admin, "/metrics");
    assert_eq!(r.status, 200, "{}\n{}", r.head, r.body);
    samples(&r.body)
}

/// Compare the named samples; on a mismatch, show the whole page.
fn assert_samples(page: &BTreeMap<String, i64>, expected: &[(&str, i64)]) {
    let wrong: Vec<String> = expected
        .iter()
        .filter(|(name, value)| page.get(*name) != Some(value))
        .map(|(name, value)| format!("{name}: expected {value}, got {:?}", page.get(*name)))
        .collect();
    assert!(wrong.is_empty(), "{wrong:#?}\npage: {page:#?}");
}

// ---- /metrics, /healthz, /readyz --------------------------------------------------------------

#[tokio::test]
async fn metrics_count_exactly_what_clients_did() {
    let broker = Broker::start_with_args(DEFAULT_LISTENER, ADMIN_ON_LOOPBACK);
    let admin = admin_addr(&broker);
    let addr = broker.addr();

    let r = http_get(admin, "/metrics");
    assert!(
        r.head
            .to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{}",
        r.head
    );
    assert!(
        r.body
            .contains("# TYPE aio_broker_publishes_received counter\n")
    );
    assert!(r.body.contains("# HELP aio_broker_connected_sessions "));
    assert_samples(
        &samples(&r.body),
        &[
            ("gatehouse_connections_accepted", 0),
            ("aio_broker_publishes_received", 0),
            ("aio_broker_total_sessions", 0),
        ],
    );

    let sub_id = unique_id("obs-sub");
    let mut sub_connect = connect_v5(&sub_id);
    // Persistent, so the session and its subscription survive the takeover below.
    sub_connect.properties.session_expiry_interval = Some(300);
    let (mut sub, _) = RawClient::connect_ok(addr, sub_connect).await;
    sub.subscribe("obs/t", QoS::AtLeastOnce).await;
    let mut pub_connect = connect_v5(&unique_id("obs-pub"));
    pub_connect.will = Some(will("obs/will", "gone", QoS::AtMostOnce));
    let (mut publisher, _) = RawClient::connect_ok(addr, pub_connect).await;

    for payload in ["five!", "ten bytes!", "twenty bytes exactly"] {
        let code = publisher
            .publish(publish("obs/t", QoS::AtLeastOnce, payload.as_bytes()))
            .await;
        assert_eq!(code, ReasonCode::SUCCESS);
        assert_eq!(
            &sub.recv_publish_ack().await.payload[..],
            payload.as_bytes()
        );
    }
    let mut retained = publish("obs/r", QoS::AtLeastOnce, b"retain!");
    retained.retain = true;
    assert_eq!(publisher.publish(retained).await, ReasonCode::SUCCESS);
    publisher
        .publish(publish("obs/t", QoS::AtMostOnce, b"zero"))
        .await;
    assert_eq!(&sub.recv_publish().await.payload[..], b"zero");

    // A protocol violation: a reserved packet type instead of CONNECT.
    let mut garbage = RawClient::tcp(addr).await;
    garbage.send_raw(&[0x00, 0x00]).await;
    loop {
        match garbage.try_recv(WAIT).await {
            Recv::Closed => break,
            Recv::Packet(_) => continue,
            other => panic!("expected the broker to close, got {other:?}"),
        }
    }

    // A takeover: the old connection is told 0x8E; the session (and its subscription) stays.
    let mut again = connect_v5(&sub_id);
    again.clean_start = false;
    again.properties.session_expiry_interval = Some(300);
    let (_sub2, ack) = RawClient::connect_ok(addr, again).await;
    assert!(ack.session_present);
    assert_eq!(
        sub.expect_disconnect(WAIT).await.code,
        ReasonCode::SESSION_TAKEN_OVER
    );

    let page = scrape(admin);
    assert_samples(
        &page,
        &[
            // sub, publisher, garbage, sub again
            ("gatehouse_connections_accepted", 4),
            ("aio_broker_connected_sessions", 2),
            ("aio_broker_total_sessions", 2),
            ("aio_broker_total_subscriptions", 1),
            ("aio_broker_publishes_received", 5),
            ("aio_broker_publishes_sent", 4),
            ("aio_broker_payload_bytes_received", 5 + 10 + 20 + 7 + 4),
            ("aio_broker_payload_bytes_sent", 5 + 10 + 20 + 4),
            ("aio_broker_store_retained_messages", 1),
            ("aio_broker_store_retained_bytes", 7),
            ("aio_broker_store_will_messages", 1),
            ("aio_broker_store_will_bytes", 4),
            ("aio_broker_authentication_successes", 3),
            ("aio_broker_authentication_failures", 0),
            ("aio_broker_authentication_deny", 0),
            // three CONNECTs, five PUBLISH topics and one SUBSCRIBE filter
            ("aio_broker_authorization_allow", 9),
            ("aio_broker_authorization_deny", 0),
            (
                "aio_broker_qos0_messages_dropped{direction=\"incoming\"}",
                0,
            ),
            ("aio_broker_backpressure_packets_rejected", 0),
            ("gatehouse_subscriber_queue_dropped", 0),
            ("gatehouse_protocol_violations", 1),
            (
                "gatehouse_server_disconnects{reason_code=\"0x8E\",reason=\"Session taken over\"}",
                1,
            ),
            ("gatehouse_queued_message_bytes", 0),
        ],
    );
    let disconnects: i64 = page
        .iter()
        .filter(|(k, _)| k.starts_with("gatehouse_server_disconnects{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(disconnects, 2, "the takeover and the violation: {page:#?}");

    // Every server-initiated close is logged with the client id and the reason code.
    broker.wait_for_log(
        "for the takeover",
        |l| l.contains("disconnecting client") && l.contains(&sub_id) && l.contains("0x8E"),
        WAIT,
    );
    broker.wait_for_log(
        "for the protocol violation",
        |l| l.contains("protocol violation") && l.contains("code="),
        WAIT,
    );
}

#[test]
fn healthz_and_readyz_answer_200_when_every_port_serves() {
    let broker = Broker::start_with_args(DEFAULT_LISTENER, ADMIN_ON_LOOPBACK);
    let admin = admin_addr(&broker);
    let health = http_get(admin, "/healthz");
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    let ready = http_get(admin, "/readyz");
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(http_get(admin, "/no-such-page").status, 404);
    // The MQTT port is still the first line of the ready file.
    assert_eq!(broker.ready_ports()[0].listener, "default");
}

#[test]
fn readyz_is_503_and_names_a_tls_port_waiting_for_its_certificate() {
    let config = "apiVersion: gatehouse.io/v1\nkind: BrokerListener\nmetadata: {name: mixed}\n\
                  spec:\n  ports:\n    - {port: 0, host: 127.0.0.1}\n    \
                  - {port: 0, host: 127.0.0.1, tls: {mode: Manual, manual: {secretRef: not-there-yet}}}\n";
    let broker = Broker::start_with_args(config, ADMIN_ON_LOOPBACK);
    let admin = admin_addr(&broker);
    let ready = http_get(admin, "/readyz");
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.body.contains("mixed:"), "{}", ready.body);
    // Alive, just not ready.
    assert_eq!(http_get(admin, "/healthz").status, 200);
}

#[test]
fn no_admin_endpoint_unless_asked_for() {
    let broker = Broker::start_default();
    assert!(
        broker.ready_ports().iter().all(|p| p.listener != "admin"),
        "{:?}",
        broker.ready_ports()
    );
}

// ---- OTLP -------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct ReceivedSpan {
    name: String,
    service: Option<String>,
    attributes: BTreeMap<String, String>,
}

/// (metric name, attributes, value) of one data point.
type Point = (String, BTreeMap<String, String>, i64);

/// What the in-process collector has received so far.
#[derive(Default, Clone)]
struct Collector {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    /// (metric name, attributes, value) of every data point, in arrival order.
    points: Arc<Mutex<Vec<Point>>>,
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                Some(any_value::Value::BoolValue(b)) => b.to_string(),
                Some(any_value::Value::IntValue(i)) => i.to_string(),
                Some(any_value::Value::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| attributes(&r.attributes).remove("service.name"));
            for ss in rs.scope_spans {
                for span in ss.spans {
                    spans.push(ReceivedSpan {
                        name: span.name,
                        service: service.clone(),
                        attributes: attributes(&span.attributes),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let mut points = self.points.lock().unwrap();
        for rm in request.into_inner().resource_metrics {
            for sm in rm.scope_metrics {
                for m in sm.metrics {
                    let data_points = match m.data {
                        Some(metric::Data::Sum(s)) => s.data_points,
                        Some(metric::Data::Gauge(g)) => g.data_points,
                        _ => Vec::new(),
                    };
                    for p in data_points {
                        let value = match p.value {
                            Some(number_data_point::Value::AsInt(i)) => i,
                            Some(number_data_point::Value::AsDouble(d)) => d as i64,
                            None => continue,
                        };
                        points.push((m.name.clone(), attributes(&p.attributes), value));
                    }
                }
            }
        }
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

impl Collector {
    /// Serve OTLP/gRPC on an OS-assigned loopback port; returns the collector and its URL.
    async fn start() -> (Collector, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind collector");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let collector = Collector::default();
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .add_service(MetricsServiceServer::new(collector.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
        tokio::spawn(async move { server.await.expect("collector stopped") });
        (collector, url)
    }

    fn connect_span(&self, client_id: &str) -> Option<ReceivedSpan> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .find(|s| {
                s.name == "mqtt.connect"
                    && s.attributes.get("client_id").map(String::as_str) == Some(client_id)
            })
            .cloned()
    }

    /// The most recent value of an unlabelled metric.
    fn latest(&self, name: &str) -> Option<i64> {
        self.points
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(n, attrs, _)| n == name && attrs.is_empty())
            .map(|(_, _, v)| *v)
    }

    /// Poll (bounded by [`WAIT`]) until `f` returns something.
    async fn wait_for<T>(&self, what: &str, f: impl Fn(&Collector) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(t) = f(self) {
                return t;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what} did not arrive within {WAIT:?}; spans: {:#?}; metric points: {}",
                self.spans.lock().unwrap(),
                self.points.lock().unwrap().len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Connect, publish one message and disconnect; returns the client id.
async fn one_publish(addr: SocketAddr, prefix: &str) -> String {
    let id = unique_id(prefix);
    let mut c = RawClient::v5(addr, &id).await;
    assert_eq!(
        c.publish(publish("otlp/t", QoS::AtLeastOnce, b"hello"))
            .await,
        ReasonCode::SUCCESS
    );
    c.disconnect().await;
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_exports_connect_spans_and_metrics_periodically() {
    let (collector, url) = Collector::start().await;
    let broker = Broker::start_with_env(
        DEFAULT_LISTENER,
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str()),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ],
    );
    let id = one_publish(broker.addr(), "otlp").await;

    let span = collector
        .wait_for("the mqtt.connect span", |c| c.connect_span(&id))
        .await;
    assert_eq!(span.service.as_deref(), Some("gatehouse"), "{span:?}");
    assert_eq!(
        span.attributes.get("outcome").map(String::as_str),
        Some("accepted"),
        "{span:?}"
    );
    assert_eq!(
        span.attributes.get("protocol").map(String::as_str),
        Some("V5"),
        "{span:?}"
    );
    // Counters are cumulative: some export carries exactly the one PUBLISH.
    collector
        .wait_for("aio_broker_publishes_received = 1", |c| {
            (c.latest("aio_broker_publishes_received") == Some(1)).then_some(())
        })
        .await;
    collector
        .wait_for("aio_broker_authentication_successes = 1", |c| {
            (c.latest("aio_broker_authentication_successes") == Some(1)).then_some(())
        })
        .await;
    // Stored-state gauges come through the same snapshot: the client is gone.
    collector
        .wait_for("aio_broker_total_sessions = 0", |c| {
            (c.latest("aio_broker_total_sessions") == Some(0)).then_some(())
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_flushes_on_graceful_shutdown() {
    let (collector, url) = Collector::start().await;
    // Intervals far longer than the test: whatever arrives was flushed by the shutdown.
    let mut broker = Broker::start_with_env(
        DEFAULT_LISTENER,
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str()),
            ("OTEL_METRIC_EXPORT_INTERVAL", "3600000"),
            ("OTEL_BSP_SCHEDULE_DELAY", "3600000"),
        ],
    );
    let id = one_publish(broker.addr(), "flush").await;
    let status = tokio::task::spawn_blocking(move || {
        let status = broker.terminate();
        (status, broker)
    })
    .await
    .expect("terminate");
    assert_eq!(status.0.code(), Some(0), "{}", status.1.logs());
    assert!(
        collector.connect_span(&id).is_some(),
        "{:#?}",
        collector.spans
    );
    assert_eq!(collector.latest("aio_broker_publishes_received"), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_is_off_when_the_sdk_is_disabled() {
    let (collector, url) = Collector::start().await;
    let mut broker = Broker::start_with_env(
        DEFAULT_LISTENER,
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str()),
            ("OTEL_SDK_DISABLED", "true"),
        ],
    );
    one_publish(broker.addr(), "disabled").await;
    // Shutdown would flush anything there were to flush: after it, absence is final.
    let status = tokio::task::spawn_blocking(move || broker.terminate())
        .await
        .expect("terminate");
    assert_eq!(status.code(), Some(0));
    assert!(collector.spans.lock().unwrap().is_empty());
    assert!(collector.points.lock().unwrap().is_empty());
}

// ---- secrets in logs --------------------------------------------------------------------------

#[tokio::test]
async fn connect_passwords_never_reach_trace_level_json_logs() {
    let mut broker = Broker::start_with_args(
        DEFAULT_LISTENER,
        &["--log", "trace", "--log-format", "json"],
    );
    let addr = broker.addr();
    let secret = format!("pw-{}-{:x}", std::process::id(), rand_tag());

    let id5 = unique_id("secret5");
    let mut v5 = connect_v5(&id5);
    v5.username = Some("obs-user".into());
    v5.password = Some(bytes::Bytes::from(secret.clone()));
    let (mut c5, _) = RawClient::connect_ok(addr, v5).await;
    c5.subscribe("secret/t", QoS::AtLeastOnce).await;
    c5.publish(publish("secret/t", QoS::AtLeastOnce, b"x"))
        .await;
    c5.recv_publish_ack().await;

    let mut v3 = connect_v311(&unique_id("secret3"), true);
    v3.username = Some("obs-user".into());
    v3.password = Some(bytes::Bytes::from(secret.clone()));
    let (c3, _) = RawClient::connect_ok(addr, v3).await;
    c3.disconnect().await;
    // A takeover, so the kick and close paths log too.
    let mut again = connect_v5(&id5);
    again.password = Some(bytes::Bytes::from(secret.clone()));
    let _ = RawClient::connect_ok(addr, again).await;
    c5.expect_disconnect(WAIT).await;

    let status = tokio::task::spawn_blocking(move || {
        let status = broker.terminate();
        (status, broker)
    })
    .await
    .expect("terminate");
    let (status, broker) = status;
    assert_eq!(status.code(), Some(0));
    let logs = broker.logs();
    assert!(
        logs.contains("\"level\":\"DEBUG\"") || logs.contains("\"level\":\"TRACE\""),
        "the test needs debug/trace logging to mean anything:\n{logs}"
    );
    let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
    let decimal = format!("{:?}", secret.as_bytes());
    for line in logs.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not a JSON line: {line:?}: {e}"));
        assert!(!line.contains(&secret), "password in the log: {line}");
        assert!(!line.contains(&hex), "password (hex) in the log: {line}");
        assert!(
            !line.contains(&decimal[1..decimal.len() - 1]),
            "password (bytes) in the log: {line}"
        );
    }
}

fn rand_tag() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}
