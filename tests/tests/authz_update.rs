//! Authorization policy updates at runtime (broker-spec §4.2, scenario 40): rewriting the
//! `BrokerAuthorization` in the configuration file applies without a restart. By default the
//! port's connected clients are disconnected (0x98) and evaluated afresh when they reconnect;
//! with `onPolicyUpdate: ReevaluateClients` they stay, lose the subscriptions the new policy no
//! longer covers, and keep the rest. A broken update changes nothing.

use std::time::Duration;

use e2e::raw::{opts, publish};
use e2e::{Broker, RawClient, WAIT, unique_id};
use mqtt::{QoS, ReasonCode};

/// Anonymous authentication (everyone is `site=lab`) and one ABAC policy whose rules are
/// `rules` (YAML list items, indented by 6).
fn config(rules: &str, on_update: &str) -> String {
    format!(
        "apiVersion: gatehouse.io/v1
kind: BrokerListener
metadata: {{name: default}}
spec:
  ports:
    - {{port: 0, host: 127.0.0.1, authenticationRef: dev, authorizationRef: rules}}
---
apiVersion: gatehouse.io/v1
kind: BrokerAuthentication
metadata: {{name: dev}}
spec:
  authenticationMethods:
    - method: Anonymous
      anonymousSettings: {{allow: true, attributes: {{site: lab}}}}
---
apiVersion: gatehouse.io/v1
kind: BrokerAuthorization
metadata: {{name: rules}}
spec:
  onPolicyUpdate: {on_update}
  authorizationPolicies:
    rules:
{rules}"
    )
}

const BOTH: &str = "      - principals: {attributes: [{site: lab}]}
        brokerResources:
          - {method: Connect}
          - {method: Publish, topics: ['#']}
          - {method: Subscribe, topics: ['a/#', 'b/#']}
";

const ONLY_B: &str = "      - principals: {attributes: [{site: lab}]}
        brokerResources:
          - {method: Connect}
          - {method: Publish, topics: ['#']}
          - {method: Subscribe, topics: ['b/#']}
";

async fn subscriber(broker: &Broker, filters: &[&str]) -> RawClient {
    let mut c = RawClient::v5(broker.addr(), &unique_id("sub")).await;
    for f in filters {
        let ack = c.subscribe_with(&[(f, opts(QoS::AtMostOnce))], None).await;
        assert_eq!(ack.codes, vec![ReasonCode::SUCCESS], "{f}");
    }
    c
}

#[tokio::test]
async fn update_disconnects_connected_clients_and_reconnects_see_new_rules() {
    let broker = Broker::start(&config(BOTH, "DisconnectClients"));
    let mut client = subscriber(&broker, &["a/#"]).await;
    broker.rewrite_config(&config(ONLY_B, "DisconnectClients"));
    let d = client
        .expect_disconnect(WAIT + Duration::from_secs(2))
        .await;
    assert_eq!(d.code, ReasonCode::ADMINISTRATIVE_ACTION);
    broker.wait_for_log(
        "the update is logged",
        |l| l.contains("authorization policy updated"),
        WAIT,
    );

    let mut again = RawClient::v5(broker.addr(), &unique_id("again")).await;
    let ack = again
        .subscribe_with(&[("a/#", opts(QoS::AtMostOnce))], None)
        .await;
    assert_eq!(
        ack.codes,
        vec![ReasonCode::NOT_AUTHORIZED],
        "new rules apply"
    );
    let ack = again
        .subscribe_with(&[("b/#", opts(QoS::AtMostOnce))], None)
        .await;
    assert_eq!(ack.codes, vec![ReasonCode::SUCCESS]);
}

#[tokio::test]
async fn reevaluate_keeps_clients_and_drops_only_revoked_subscriptions() {
    let broker = Broker::start(&config(BOTH, "ReevaluateClients"));
    let mut client = subscriber(&broker, &["a/#", "b/#"]).await;
    broker.rewrite_config(&config(ONLY_B, "ReevaluateClients"));
    broker.wait_for_log(
        "the update is applied",
        |l| l.contains("subscriptions no longer allowed were removed"),
        WAIT,
    );
    let mut publisher = RawClient::v5(broker.addr(), &unique_id("pub")).await;
    publisher
        .publish(publish("a/x", QoS::AtLeastOnce, b"revoked"))
        .await;
    publisher
        .publish(publish("b/x", QoS::AtLeastOnce, b"kept"))
        .await;
    let p = client.recv_publish().await;
    assert_eq!(
        (p.topic.as_str(), p.payload.as_ref()),
        ("b/x", &b"kept"[..]),
        "a/# was removed, b/# stays, and the client is still connected"
    );
}

#[tokio::test]
async fn a_broken_update_changes_nothing() {
    let broker = Broker::start(&config(BOTH, "DisconnectClients"));
    let mut client = subscriber(&broker, &["a/#"]).await;
    let broken = "      - principals: {attributes: [{site: lab}]}
        brokerResources:
          - {method: Subscribe, topics: ['x-{principal.clientId}/#']}
";
    broker.rewrite_config(&config(broken, "DisconnectClients"));
    broker.wait_for_log(
        "the rejection is logged",
        |l| l.contains("authorization policy update rejected"),
        WAIT,
    );
    client.sync().await;
    let mut publisher = RawClient::v5(broker.addr(), &unique_id("pub")).await;
    publisher
        .publish(publish("a/x", QoS::AtLeastOnce, b"still"))
        .await;
    assert_eq!(client.recv_publish().await.payload.as_ref(), b"still");
}
