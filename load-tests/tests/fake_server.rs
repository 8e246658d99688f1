//! `gatehouse-bench` against a scripted in-test MQTT server built on `mqtt::codec`, for what the
//! broker cannot show yet or should never do: v5 re-authentication (AUTH 0x19) answered and
//! then refused, a CONNACK refusal, MQTT over WebSocket over mutual TLS, and connections closed
//! a fixed time after CONNACK (as on credential expiry) for `--expect-lifetime`.
//!
//! The server acknowledges whatever arrives and records each CONNECT; it does not route.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use common::{bench, counter, read_json};
use e2e::pki::{KeyKind, Pki};
use load_tests::transport::{Io, WsIo};
use mqtt::codec::{decode, encode};
use mqtt::{
    Auth, ConnAck, Connect, Disconnect, Packet, Properties, Protocol, PubResp, QoS, ReasonCode,
    SubAck,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;

#[derive(Clone, Copy)]
enum Script {
    /// CONNACK Success, acknowledge everything.
    Accept,
    /// CONNACK with this reason code, then close.
    Refuse(u8),
    /// Answer the first `ok` re-authentications with AUTH Success, then DISCONNECT 0x87.
    Reauth { ok: usize },
    /// CONNACK Success, then close the connection (no DISCONNECT) this many ms later.
    CloseAfter(u64),
}

struct Fake {
    addr: SocketAddr,
    connects: Arc<Mutex<Vec<Connect>>>,
}

async fn fake(script: Script, tls: Option<TlsAcceptor>, ws: bool) -> Fake {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connects = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&connects);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (tls, seen) = (tls.clone(), Arc::clone(&seen));
            tokio::spawn(async move {
                let io: Box<dyn Io> = match tls {
                    Some(acceptor) => match acceptor.accept(tcp).await {
                        Ok(s) => Box::new(s),
                        Err(_) => return,
                    },
                    None => Box::new(tcp),
                };
                let io: Box<dyn Io> = if ws {
                    #[allow(clippy::result_large_err, reason = "tungstenite's callback type")]
                    let choose_mqtt = |req: &Request, mut resp: Response| {
                        assert_eq!(req.uri().path(), "/mqtt");
                        resp.headers_mut()
                            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
                        Ok(resp)
                    };
                    match tokio_tungstenite::accept_hdr_async(io, choose_mqtt).await {
                        Ok(ws) => Box::new(WsIo::new(ws)),
                        Err(_) => return,
                    }
                } else {
                    io
                };
                serve(io, script, seen).await;
            });
        }
    });
    Fake { addr, connects }
}

fn ok(packet_id: u16) -> PubResp {
    PubResp {
        packet_id,
        code: ReasonCode::SUCCESS,
        properties: Properties::default(),
    }
}

async fn serve(mut io: Box<dyn Io>, script: Script, seen: Arc<Mutex<Vec<Connect>>>) {
    let mut buf = BytesMut::new();
    let mut protocol = Protocol::V5;
    let mut reauths = 0;
    loop {
        let packet = loop {
            match decode(&mut buf, protocol, usize::MAX) {
                Ok(Some(p)) => break p,
                Ok(None) => {}
                Err(e) => panic!("the generator sent a malformed packet: {e:?}"),
            }
            match io.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        let mut reply = Vec::new();
        let mut close = false;
        match packet {
            Packet::Connect(c) => {
                protocol = c.protocol;
                seen.lock().unwrap().push(*c);
                let code = match script {
                    Script::Refuse(code) => {
                        close = true;
                        ReasonCode(code)
                    }
                    _ => ReasonCode::SUCCESS,
                };
                reply.push(Packet::ConnAck(ConnAck {
                    code,
                    ..ConnAck::default()
                }));
            }
            Packet::Publish(p) => match p.qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => reply.push(Packet::PubAck(ok(p.packet_id))),
                QoS::ExactlyOnce => reply.push(Packet::PubRec(ok(p.packet_id))),
            },
            Packet::PubRel(r) => reply.push(Packet::PubComp(ok(r.packet_id))),
            Packet::Subscribe(s) => reply.push(Packet::SubAck(SubAck {
                packet_id: s.packet_id,
                codes: s
                    .filters
                    .iter()
                    .map(|(_, o)| ReasonCode(o.qos as u8))
                    .collect(),
                properties: Properties::default(),
            })),
            Packet::PingReq => reply.push(Packet::PingResp),
            Packet::Auth(a) => {
                assert_eq!(a.code, ReasonCode::REAUTHENTICATE);
                reauths += 1;
                let Script::Reauth { ok } = script else {
                    panic!("unexpected AUTH")
                };
                if reauths <= ok {
                    reply.push(Packet::Auth(Auth {
                        code: ReasonCode::SUCCESS,
                        properties: Properties {
                            authentication_method: a.properties.authentication_method,
                            ..Properties::default()
                        },
                    }));
                } else {
                    close = true;
                    reply.push(Packet::Disconnect(Disconnect {
                        code: ReasonCode::NOT_AUTHORIZED,
                        properties: Properties::default(),
                    }));
                }
            }
            Packet::Disconnect(_) => return,
            other => panic!("unexpected {other:?}"),
        }
        let mut out = BytesMut::new();
        for p in &reply {
            encode(p, protocol, &mut out);
        }
        if io.write_all(&out).await.is_err() || io.flush().await.is_err() {
            return;
        }
        if close {
            let _ = io.shutdown().await;
            return;
        }
        if let (Script::CloseAfter(ms), Some(Packet::ConnAck(_))) = (script, reply.first()) {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            let _ = io.shutdown().await;
            return;
        }
    }
}

/// Run the generator on a blocking thread so the fake server keeps running meanwhile.
async fn bench_async(args: Vec<String>) -> e2e::process::Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        bench(&args)
    })
    .await
    .unwrap()
}

fn args(line: &str, json: &Path) -> Vec<String> {
    line.split_whitespace()
        .map(str::to_owned)
        .chain(["--json".to_owned(), json.display().to_string()])
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reauthentication_succeeds_then_is_refused() {
    let server = fake(Script::Reauth { ok: 2 }, None, false).await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.txt");
    std::fs::write(&tokens, "tok-a\ntok-b\ntok-c\n").unwrap();
    let json = dir.path().join("out.json");
    let line = format!(
        "conn -h 127.0.0.1 -p {} -c 3 -i 0 -V 5 --prefix dev --auth-method GH-TOKEN \
         --auth-data-file {} --reauth-interval 20 --duration 80",
        server.addr.port(),
        tokens.display()
    );
    // Each connection re-authenticates twice, is disconnected on the third try, and with all
    // three gone the run ends on its own.
    let out = bench_async(args(&line, &json)).await;
    assert!(out.success(), "{}\n{}", out.stdout, out.stderr);
    let v = read_json(&json);
    assert_eq!(counter(&v, "connect_succ"), 3);
    assert_eq!(counter(&v, "reauth_succ"), 6);
    assert_eq!(counter(&v, "reauth_fail"), 3);
    assert_eq!(counter(&v, "connection_lost"), 3);
    assert!(out.stderr.contains("reason 0x87"), "{}", out.stderr);

    let connects = server.connects.lock().unwrap();
    let mut data: Vec<_> = connects
        .iter()
        .map(|c| {
            assert_eq!(c.protocol, Protocol::V5);
            assert_eq!(
                c.properties.authentication_method.as_deref(),
                Some("GH-TOKEN")
            );
            c.properties.authentication_data.clone().unwrap()
        })
        .collect();
    data.sort();
    assert_eq!(data, vec!["tok-a", "tok-b", "tok-c"]);
    let mut ids: Vec<_> = connects.iter().map(|c| c.client_id.clone()).collect();
    ids.sort();
    assert_eq!(
        ids,
        vec!["dev_bench_conn_1", "dev_bench_conn_2", "dev_bench_conn_3"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connack_refusal_is_counted() {
    let server = fake(Script::Refuse(0x86), None, false).await;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.json");
    let line = format!(
        "sub -h 127.0.0.1 -p {} -c 4 -i 0 -t t/%i -u user -P wrong --shortids --prefix s-",
        server.addr.port()
    );
    let out = bench_async(args(&line, &json)).await;
    assert!(out.success(), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("CONNACK reason code 0x86"),
        "{}",
        out.stderr
    );
    let v = read_json(&json);
    assert_eq!(counter(&v, "connect_fail"), 4);
    // As in emqtt-bench, a subscriber that never connected is also a failed subscription.
    assert_eq!(counter(&v, "sub_fail"), 4);
    assert_eq!(counter(&v, "connect_succ"), 0);
    let connects = server.connects.lock().unwrap();
    assert_eq!(connects.len(), 4);
    assert!(
        connects
            .iter()
            .all(|c| c.username.as_deref() == Some("user")
                && c.password.as_deref() == Some(&b"wrong"[..])
                && c.client_id.starts_with("s-"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_over_websocket_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let servers = Pki::contoso(KeyKind::Ec256);
    let clients = Pki::fabrikam(KeyKind::Ec256);
    let ca = servers.root.write_cert(&dir.path().join("ca.pem"));
    let client = clients.client("bench").write(dir.path(), "client");
    let server_leaf = servers.server("mqtts-endpoint", &["localhost"]);

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(clients.root.cert.pem.as_bytes()).unwrap())
        .unwrap();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .unwrap();
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            server_leaf.chain(),
            PrivateKeyDer::from_pem_slice(server_leaf.key_pem().as_bytes()).unwrap(),
        )
        .unwrap();
    let server = fake(
        Script::Accept,
        Some(TlsAcceptor::from(Arc::new(config))),
        true,
    )
    .await;

    let json = dir.path().join("out.json");
    let line = format!(
        "pub -h localhost -p {} -S --ws --cacertfile {} --certfile {} --keyfile {} \
         -c 2 -i 0 -t m/%c -q 2 -L 40 -I 0 -F 4 -x 60",
        server.addr.port(),
        ca.display(),
        client.cert.display(),
        client.key.display()
    );
    let out = bench_async(args(&line, &json)).await;
    assert!(out.success(), "{}\n{}", out.stdout, out.stderr);
    let v = read_json(&json);
    assert_eq!(counter(&v, "connect_succ"), 2, "{}", out.stderr);
    assert_eq!(counter(&v, "pub"), 40);
    assert_eq!(counter(&v, "pub_succ"), 40);
    assert_eq!(counter(&v, "connection_lost"), 0);
    let connects = server.connects.lock().unwrap();
    assert!(
        connects
            .iter()
            .all(|c| c.properties.session_expiry_interval == Some(60))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closes_after_the_expected_lifetime_are_measured() {
    let server = fake(Script::CloseAfter(300), None, false).await;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.json");
    let line = format!(
        "conn -h 127.0.0.1 -p {} -c 4 -i 0 --expect-lifetime 0.3 --duration 60",
        server.addr.port()
    );
    // Every connection is closed by the server, so the run ends on its own.
    let out = bench_async(args(&line, &json)).await;
    assert!(out.success(), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("expiry_delay_ms count=4"),
        "{}",
        out.stdout
    );
    let v = read_json(&json);
    assert_eq!(counter(&v, "connect_succ"), 4);
    assert_eq!(counter(&v, "connection_lost"), 4);
    let e = &v["expiry_delay_ms"];
    assert_eq!(e["expected_lifetime_secs"], 0.3, "{e}");
    assert_eq!(e["count"], 4, "{e}");
    for k in ["min", "p50", "p99", "max"] {
        assert!(e[k].is_number(), "{k}: {e}");
    }
    // One CONNECT→CONNACK sample per connection.
    assert_eq!(v["connect_latency_ms"]["count"], 4, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_expect_lifetime_there_is_no_expiry_figure() {
    let server = fake(Script::Accept, None, false).await;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.json");
    let line = format!(
        "conn -h 127.0.0.1 -p {} -c 3 -i 0 --duration 0.5",
        server.addr.port()
    );
    let out = bench_async(args(&line, &json)).await;
    assert!(out.success(), "{}\n{}", out.stdout, out.stderr);
    let v = read_json(&json);
    assert_eq!(counter(&v, "connect_succ"), 3);
    assert!(v["expiry_delay_ms"].is_null(), "{v}");
    assert_eq!(v["connect_latency_ms"]["count"], 3, "{v}");
    for k in ["min", "p50", "p90", "p99", "p999", "max"] {
        assert!(v["connect_latency_ms"][k].is_number(), "{k}: {v}");
    }
}
