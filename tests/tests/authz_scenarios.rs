//! Authorization outcomes through the real broker that the unit tests cannot show: which ports
//! apply a policy (scenario 28), what 3.1.1 clients see (31, 32), and the reserved self-check
//! namespace (43). The spec §5 tutorial (30, 39) is in `auth_x509.rs`; updates (40) in
//! `authz_update.rs`; rule semantics (29, 33–38, 41, 42) in `frontend/src/authz_tests.rs`.

use e2e::raw::{connect_v311, opts, publish};
use e2e::{Broker, QUIET, RawClient, unique_id};
use mqtt::{QoS, ReasonCode};

/// Port 1: authentication (Anonymous, everyone `site=lab`) and a policy allowing publish on
/// `allowed/#` (and `azedge/#`) and subscribe on `allowed/#`. Port 2: the same policy but no
/// authentication, so the policy does not apply there.
const CONFIG: &str = "apiVersion: gatehouse.io/v1
kind: BrokerListener
metadata: {name: default}
spec:
  ports:
    - {port: 0, host: 127.0.0.1, authenticationRef: dev, authorizationRef: rules}
    - {port: 0, host: 127.0.0.1, authorizationRef: rules}
---
apiVersion: gatehouse.io/v1
kind: BrokerAuthentication
metadata: {name: dev}
spec:
  authenticationMethods:
    - method: Anonymous
      anonymousSettings: {allow: true, attributes: {site: lab}}
---
apiVersion: gatehouse.io/v1
kind: BrokerAuthorization
metadata: {name: rules}
spec:
  authorizationPolicies:
    rules:
      - principals: {attributes: [{site: lab}]}
        brokerResources:
          - {method: Connect}
          - {method: Publish, topics: ['allowed/#', 'azedge/#']}
          - {method: Subscribe, topics: ['allowed/#']}
";

#[tokio::test]
async fn authorization_without_authentication_does_not_apply_scenario_28() {
    let broker = Broker::start(CONFIG);
    let open_port = broker.ready_ports()[1].local_addr;
    let mut c = RawClient::v5(open_port, &unique_id("open")).await;
    let code = c
        .publish(publish("anything/at/all", QoS::AtLeastOnce, b"x"))
        .await;
    assert_eq!(code, ReasonCode::SUCCESS);
    let mut guarded = RawClient::v5(broker.addr(), &unique_id("guarded")).await;
    let code = guarded
        .publish(publish("anything/at/all", QoS::AtLeastOnce, b"x"))
        .await;
    assert_eq!(
        code,
        ReasonCode::NOT_AUTHORIZED,
        "the same policy applies on port 1"
    );
}

#[tokio::test]
async fn v311_denials_are_acknowledged_and_dropped_scenarios_31_32() {
    let broker = Broker::start(CONFIG);
    // The watcher sits on the port without authorization, so it sees everything routed.
    let mut watcher = RawClient::v5(broker.ready_ports()[1].local_addr, &unique_id("watch")).await;
    watcher.subscribe("#", QoS::AtLeastOnce).await;
    let (mut old, _) =
        RawClient::connect_ok(broker.addr(), connect_v311(&unique_id("v311"), true)).await;
    // 3.1.1 has no PUBACK reason codes: the denied PUBLISH is acknowledged...
    let code = old
        .publish(publish("denied/topic", QoS::AtLeastOnce, b"dropped"))
        .await;
    assert_eq!(code, ReasonCode::SUCCESS);
    // ...and dropped: the allowed one that follows is the first thing the watcher sees.
    old.publish(publish("allowed/topic", QoS::AtLeastOnce, b"delivered"))
        .await;
    let p = watcher.recv_publish().await;
    assert_eq!(p.topic, "allowed/topic");
    // SUBACK 0x80 for the denied filter, the granted QoS for the allowed one.
    let ack = old
        .subscribe_with(
            &[
                ("denied/#", opts(QoS::AtLeastOnce)),
                ("allowed/x", opts(QoS::AtLeastOnce)),
            ],
            None,
        )
        .await;
    assert_eq!(ack.codes, vec![ReasonCode(0x80), ReasonCode(0x01)]);
}

#[tokio::test]
async fn the_self_check_namespace_is_reserved_scenario_43() {
    let broker = Broker::start(CONFIG);
    let mut c = RawClient::v5(broker.addr(), &unique_id("c")).await;
    // The rule grants azedge/#, but azedge/dmqtt/selftest is the broker's own.
    let code = c
        .publish(publish("azedge/dmqtt/selftest/x", QoS::AtLeastOnce, b"x"))
        .await;
    assert_eq!(code, ReasonCode::NOT_AUTHORIZED);
    let code = c
        .publish(publish("azedge/other", QoS::AtLeastOnce, b"x"))
        .await;
    assert_eq!(
        code,
        ReasonCode::SUCCESS,
        "only the self-check subtree is reserved"
    );
    let ack = c
        .subscribe_with(&[("azedge/dmqtt/selftest/#", opts(QoS::AtMostOnce))], None)
        .await;
    assert_eq!(ack.codes, vec![ReasonCode::NOT_AUTHORIZED]);
    c.expect_silence(QUIET).await;
}
