//! The Event Grid authorization model through the real broker (broker-spec §6.3–6.4):
//! topic templates per authentication name (scenario 57) and multi-session rules (scenarios
//! 54, 55). The authentication name is the CONNECT username, vouched for by the development
//! `Anonymous` method so that the test needs no PKI.

use e2e::raw::{connect_v5, publish};
use e2e::{Broker, RawClient, WAIT, unique_id};
use mqtt::{QoS, ReasonCode};

const CONFIG: &str = "apiVersion: gatehouse.io/v1
kind: BrokerListener
metadata: {name: default}
spec:
  ports:
    - {port: 0, host: 127.0.0.1, authenticationRef: dev, authorizationRef: eg}
---
apiVersion: gatehouse.io/v1
kind: BrokerAuthentication
metadata: {name: dev}
spec:
  authenticationMethods:
    - method: Anonymous
      anonymousSettings: {allow: true}
---
apiVersion: gatehouse.io/v1
kind: BrokerAuthorization
metadata: {name: eg}
spec:
  eventGrid:
    topicSpaces:
      - name: telemetry
        topicTemplates: ['machines/${client.authenticationName}/telemetry']
    permissionBindings:
      - {name: all-publish, clientGroupName: $all, topicSpaceName: telemetry, permission: Publisher}
    maxSessionsPerAuthenticationName: 1
";

fn connect_as(client_id: &str, name: &str) -> mqtt::Connect {
    let mut c = connect_v5(client_id);
    c.username = Some(name.to_string());
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(600);
    c
}

#[tokio::test]
async fn templates_follow_the_authentication_name_scenario_57() {
    let broker = Broker::start(CONFIG);
    let (mut m1, _) =
        RawClient::connect_ok(broker.addr(), connect_as(&unique_id("m1"), "machine1")).await;
    let ok = m1
        .publish(publish(
            "machines/machine1/telemetry",
            QoS::AtLeastOnce,
            b"t",
        ))
        .await;
    assert_eq!(ok, ReasonCode::SUCCESS);
    let denied = m1
        .publish(publish(
            "machines/machine2/telemetry",
            QoS::AtLeastOnce,
            b"t",
        ))
        .await;
    assert_eq!(denied, ReasonCode::NOT_AUTHORIZED);
}

#[tokio::test]
async fn sessions_per_identity_and_client_id_ownership_scenarios_54_55() {
    let broker = Broker::start(CONFIG);
    let s1 = unique_id("s1");
    let (first, _) = RawClient::connect_ok(broker.addr(), connect_as(&s1, "app")).await;
    // Scenario 54 with a maximum of one: a second session for `app` is refused, even while
    // the first is offline-but-unexpired.
    let (_, ack) = RawClient::connect(broker.addr(), connect_as(&unique_id("s2"), "app")).await;
    assert_eq!(ack.code, ReasonCode::NOT_AUTHORIZED);
    first.disconnect().await;
    let (_, ack) = RawClient::connect(broker.addr(), connect_as(&unique_id("s2"), "app")).await;
    assert_eq!(
        ack.code,
        ReasonCode::NOT_AUTHORIZED,
        "offline sessions count"
    );
    // Scenario 55: another identity cannot use app's client id...
    let (_, ack) = RawClient::connect(broker.addr(), connect_as(&s1, "other")).await;
    assert_eq!(ack.code, ReasonCode::NOT_AUTHORIZED);
    // ...while app resumes it, and a second connection of app takes it over (0x8E).
    let (mut again, ack) = RawClient::connect_ok(broker.addr(), connect_as(&s1, "app")).await;
    assert!(ack.session_present);
    let (_taker, ack) = RawClient::connect_ok(broker.addr(), connect_as(&s1, "app")).await;
    assert!(ack.session_present);
    let d = again.expect_disconnect(WAIT).await;
    assert_eq!(d.code, ReasonCode::SESSION_TAKEN_OVER);
}
