//! rumqttc clients (MQTT 3.1.1 and 5.0) wrapped for tests: the event loop runs in a background
//! task and incoming packets queue in an inbox that tests read with bounded waits.
//!
//! This is a third-party client used as-is, to check the broker against somebody else's codec
//! and state machine. It is not the place for byte-level or misbehaving-client tests (see
//! `raw`), and it does not reconnect: the first connection error ends the client.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::net::SocketAddr;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5 as p5;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::WAIT;

/// Incoming packets, in arrival order, with the ones a test has not asked for yet kept aside.
pub struct Inbox<P> {
    rx: mpsc::UnboundedReceiver<Result<P, String>>,
    pending: VecDeque<P>,
    error: Option<String>,
}

impl<P: Debug> Inbox<P> {
    /// The first packet (already queued or arriving within `timeout`) that `f` maps to
    /// `Some`; packets it skips stay queued for later calls.
    pub async fn next_matching<T>(
        &mut self,
        timeout: Duration,
        mut f: impl FnMut(&P) -> Option<T>,
    ) -> Option<T> {
        if let Some(i) = self.pending.iter().position(|p| f(p).is_some()) {
            let p = self.pending.remove(i).expect("index from position");
            return f(&p);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        while self.error.is_none() {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Err(_) => return None,
                Ok(None) => self.error = Some("event loop ended".to_owned()),
                Ok(Some(Err(e))) => self.error = Some(e),
                Ok(Some(Ok(p))) => match f(&p) {
                    Some(t) => return Some(t),
                    None => self.pending.push_back(p),
                },
            }
        }
        None
    }

    /// Like [`Inbox::next_matching`] within [`WAIT`], but panics with what arrived instead.
    pub async fn expect<T>(&mut self, what: &str, f: impl FnMut(&P) -> Option<T>) -> T {
        match self.next_matching(WAIT, f).await {
            Some(t) => t,
            None => panic!(
                "no {what} within {WAIT:?}; connection error: {:?}; other packets: {:?}",
                self.error, self.pending
            ),
        }
    }

    /// The connection error that ended the event loop, waiting up to `timeout` for it.
    pub async fn wait_error(&mut self, timeout: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.error.is_none() {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Err(_) => break,
                Ok(None) => self.error = Some("event loop ended".to_owned()),
                Ok(Some(Err(e))) => self.error = Some(e),
                Ok(Some(Ok(p))) => self.pending.push_back(p),
            }
        }
        self.error.clone()
    }
}

/// A connected rumqttc MQTT 5 client.
pub struct V5 {
    pub client: rumqttc::v5::AsyncClient,
    pub connack: p5::ConnAck,
    pub inbox: Inbox<p5::Packet>,
    task: JoinHandle<()>,
}

/// Options for a v5 client of `addr`: keep alive 30 s, clean start, 1 MiB packets.
pub fn v5_options(addr: SocketAddr, client_id: &str) -> rumqttc::v5::MqttOptions {
    let mut o = rumqttc::v5::MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(Some(1024 * 1024));
    o
}

impl V5 {
    /// Connect with `options`; panics unless the CONNACK is a success.
    pub async fn connect(options: rumqttc::v5::MqttOptions) -> V5 {
        V5::try_connect(options)
            .await
            .unwrap_or_else(|e| panic!("v5 connect failed: {e}"))
    }

    /// Connect to `addr` with default options.
    pub async fn at(addr: SocketAddr, client_id: &str) -> V5 {
        V5::connect(v5_options(addr, client_id)).await
    }

    /// Connect; `Err` carries the connection error (e.g. a refused CONNACK).
    pub async fn try_connect(options: rumqttc::v5::MqttOptions) -> Result<V5, String> {
        use rumqttc::v5::Event;
        let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(options, 100);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(p)) => {
                        if tx.send(Ok(p)).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Outgoing(_)) => {}
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                }
            }
        });
        let mut inbox = Inbox {
            rx,
            pending: VecDeque::new(),
            error: None,
        };
        let connack = inbox
            .next_matching(WAIT, |p| match p {
                p5::Packet::ConnAck(c) => Some(c.clone()),
                _ => None,
            })
            .await;
        match connack {
            Some(connack) => Ok(V5 {
                client,
                connack,
                inbox,
                task,
            }),
            None => {
                task.abort();
                Err(inbox.error.unwrap_or_else(|| "no CONNACK".to_owned()))
            }
        }
    }

    /// Subscribe and wait for the SUBACK.
    pub async fn subscribe(
        &mut self,
        filter: &str,
        qos: rumqttc::v5::mqttbytes::QoS,
    ) -> p5::SubAck {
        self.client
            .subscribe(filter, qos)
            .await
            .expect("subscribe request");
        self.expect_suback().await
    }

    /// Subscribe with full options and properties, and wait for the SUBACK.
    pub async fn subscribe_filter(
        &mut self,
        filter: p5::Filter,
        properties: Option<p5::SubscribeProperties>,
    ) -> p5::SubAck {
        match properties {
            Some(props) => self
                .client
                .subscribe_many_with_properties([filter], props)
                .await
                .expect("subscribe request"),
            None => self
                .client
                .subscribe_many([filter])
                .await
                .expect("subscribe request"),
        }
        self.expect_suback().await
    }

    async fn expect_suback(&mut self) -> p5::SubAck {
        self.inbox
            .expect("SUBACK", |p| match p {
                p5::Packet::SubAck(s) => Some(s.clone()),
                _ => None,
            })
            .await
    }

    /// Publish and, for QoS 1/2, wait until the flow completes (PUBACK or PUBCOMP).
    pub async fn publish(
        &mut self,
        topic: &str,
        qos: rumqttc::v5::mqttbytes::QoS,
        retain: bool,
        payload: impl Into<bytes::Bytes>,
    ) {
        self.client
            .publish(topic, qos, retain, payload)
            .await
            .expect("publish request");
        self.wait_publish_done(qos).await;
    }

    /// [`V5::publish`] with PUBLISH properties.
    pub async fn publish_with(
        &mut self,
        topic: &str,
        qos: rumqttc::v5::mqttbytes::QoS,
        retain: bool,
        payload: impl Into<bytes::Bytes>,
        properties: p5::PublishProperties,
    ) {
        self.client
            .publish_with_properties(topic, qos, retain, payload, properties)
            .await
            .expect("publish request");
        self.wait_publish_done(qos).await;
    }

    async fn wait_publish_done(&mut self, qos: rumqttc::v5::mqttbytes::QoS) {
        use rumqttc::v5::mqttbytes::QoS;
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                let ack = self
                    .inbox
                    .expect("PUBACK", |p| match p {
                        p5::Packet::PubAck(a) => Some(a.clone()),
                        _ => None,
                    })
                    .await;
                assert_eq!(ack.reason, p5::PubAckReason::Success, "PUBACK {ack:?}");
            }
            QoS::ExactlyOnce => {
                self.inbox
                    .expect("PUBCOMP", |p| match p {
                        p5::Packet::PubComp(c) => Some(c.clone()),
                        _ => None,
                    })
                    .await;
            }
        }
    }

    /// The next PUBLISH within `timeout`.
    pub async fn next_publish(&mut self, timeout: Duration) -> Option<p5::Publish> {
        self.inbox
            .next_matching(timeout, |p| match p {
                p5::Packet::Publish(p) => Some(p.clone()),
                _ => None,
            })
            .await
    }

    /// The next PUBLISH within [`WAIT`]; panics if none.
    pub async fn expect_publish(&mut self) -> p5::Publish {
        self.inbox
            .expect("PUBLISH", |p| match p {
                p5::Packet::Publish(p) => Some(p.clone()),
                _ => None,
            })
            .await
    }

    /// Send DISCONNECT and let the event loop finish (bounded).
    pub async fn disconnect(mut self) {
        self.client.disconnect().await.expect("disconnect request");
        let _ = self.inbox.wait_error(WAIT).await;
    }
}

impl Drop for V5 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A connected rumqttc MQTT 3.1.1 client.
pub struct V4 {
    pub client: rumqttc::AsyncClient,
    pub connack: rumqttc::ConnAck,
    pub inbox: Inbox<rumqttc::Packet>,
    task: JoinHandle<()>,
}

/// Options for a 3.1.1 client of `addr`: keep alive 30 s, clean session, 1 MiB packets.
pub fn v4_options(addr: SocketAddr, client_id: &str) -> rumqttc::MqttOptions {
    let mut o = rumqttc::MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1024 * 1024, 1024 * 1024);
    o
}

impl V4 {
    pub async fn connect(options: rumqttc::MqttOptions) -> V4 {
        use rumqttc::{Event, Packet};
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 100);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(p)) => {
                        if tx.send(Ok(p)).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Outgoing(_)) => {}
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                }
            }
        });
        let mut inbox = Inbox {
            rx,
            pending: VecDeque::new(),
            error: None,
        };
        let connack = inbox
            .expect("CONNACK", |p| match p {
                Packet::ConnAck(c) => Some(c.clone()),
                _ => None,
            })
            .await;
        V4 {
            client,
            connack,
            inbox,
            task,
        }
    }

    pub async fn at(addr: SocketAddr, client_id: &str) -> V4 {
        V4::connect(v4_options(addr, client_id)).await
    }

    pub async fn subscribe(&mut self, filter: &str, qos: rumqttc::QoS) -> rumqttc::SubAck {
        self.client
            .subscribe(filter, qos)
            .await
            .expect("subscribe request");
        self.inbox
            .expect("SUBACK", |p| match p {
                rumqttc::Packet::SubAck(s) => Some(s.clone()),
                _ => None,
            })
            .await
    }

    /// Publish and, for QoS 1/2, wait until the flow completes.
    pub async fn publish(
        &mut self,
        topic: &str,
        qos: rumqttc::QoS,
        retain: bool,
        payload: impl Into<Vec<u8>>,
    ) {
        use rumqttc::{Packet, QoS};
        self.client
            .publish(topic, qos, retain, payload)
            .await
            .expect("publish request");
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                self.inbox
                    .expect("PUBACK", |p| matches!(p, Packet::PubAck(_)).then_some(()))
                    .await
            }
            QoS::ExactlyOnce => {
                self.inbox
                    .expect("PUBCOMP", |p| matches!(p, Packet::PubComp(_)).then_some(()))
                    .await
            }
        }
    }

    pub async fn next_publish(&mut self, timeout: Duration) -> Option<rumqttc::Publish> {
        self.inbox
            .next_matching(timeout, |p| match p {
                rumqttc::Packet::Publish(p) => Some(p.clone()),
                _ => None,
            })
            .await
    }

    pub async fn expect_publish(&mut self) -> rumqttc::Publish {
        self.inbox
            .expect("PUBLISH", |p| match p {
                rumqttc::Packet::Publish(p) => Some(p.clone()),
                _ => None,
            })
            .await
    }

    pub async fn disconnect(mut self) {
        self.client.disconnect().await.expect("disconnect request");
        let _ = self.inbox.wait_error(WAIT).await;
    }
}

impl Drop for V4 {
    fn drop(&mut self) {
        self.task.abort();
    }
}
