//! Interop with Debian's mosquitto command-line clients (libmosquitto 2.0) over MQTT 3.1.1 and
//! 5.0: QoS 0/1/2, retained messages, v5 properties, wills, persistent sessions and shared
//! subscriptions, as an operator would try them by hand.
//!
//! The tools must be installed (scripts/test.sh does it); a missing tool fails the test rather
//! than skipping it, so a CI run cannot pass without the interop check.

use e2e::Broker;
use e2e::mosquitto::{
    DEFAULT_FORMAT, available, mosquitto_pub, mosquitto_pub_ok, mosquitto_sub_spawn,
    mosquitto_sub_spawn_fmt, mosquitto_sub_spawn_nowait,
};
use e2e::unique_id;

const VERSIONS: [&str; 2] = ["mqttv311", "mqttv5"];

fn require_tools() {
    assert!(
        available(),
        "mosquitto-clients are not installed; run scripts/test.sh"
    );
}

#[test]
fn qos_0_1_2_round_trip_for_both_protocol_versions() {
    require_tools();
    let broker = Broker::start_default();
    for version in VERSIONS {
        for qos in ["0", "1", "2"] {
            let topic = format!("mosq/{version}/{qos}");
            let payload = format!("hello {version} q{qos}");
            let sub = mosquitto_sub_spawn(
                &broker,
                &["-V", version, "-q", "2", "-t", &topic, "-C", "1"],
            );
            mosquitto_pub_ok(
                &broker,
                &["-V", version, "-q", qos, "-t", &topic, "-m", &payload],
            );
            let (messages, out) = sub.finish();
            assert!(out.success(), "mosquitto_sub {version} q{qos}: {out:?}");
            assert_eq!(
                messages,
                vec![vec![topic.clone(), qos.to_owned(), "0".to_owned(), payload]]
            );
        }
    }
}

#[test]
fn mixed_versions_and_qos_downgrade() {
    require_tools();
    let broker = Broker::start_default();
    // A 3.1.1 subscriber at QoS 1 gets a v5 QoS 2 publish at QoS 1.
    let sub = mosquitto_sub_spawn(
        &broker,
        &["-V", "mqttv311", "-q", "1", "-t", "mixed/t", "-C", "1"],
    );
    mosquitto_pub_ok(
        &broker,
        &["-V", "mqttv5", "-q", "2", "-t", "mixed/t", "-m", "down"],
    );
    let (messages, _) = sub.finish();
    assert_eq!(
        messages,
        vec![vec![
            "mixed/t".to_owned(),
            "1".into(),
            "0".into(),
            "down".into()
        ]]
    );
}

#[test]
fn retained_message_set_and_cleared() {
    require_tools();
    let broker = Broker::start_default();
    for version in VERSIONS {
        let topic = format!("mosq/retained/{version}");
        mosquitto_pub_ok(
            &broker,
            &["-V", version, "-q", "1", "-r", "-t", &topic, "-m", "kept"],
        );
        let sub = mosquitto_sub_spawn(&broker, &["-V", version, "-t", &topic, "-C", "1"]);
        let (messages, _) = sub.finish();
        assert_eq!(
            messages,
            vec![vec![topic.clone(), "0".into(), "1".into(), "kept".into()]]
        );

        // -n -r clears it: a new subscriber sees the live message first, not a retained one.
        mosquitto_pub_ok(
            &broker,
            &["-V", version, "-q", "1", "-r", "-n", "-t", &topic],
        );
        let sub = mosquitto_sub_spawn(&broker, &["-V", version, "-t", &topic, "-C", "1"]);
        mosquitto_pub_ok(&broker, &["-V", version, "-t", &topic, "-m", "live"]);
        let (messages, _) = sub.finish();
        assert_eq!(
            messages,
            vec![vec![topic.clone(), "0".into(), "0".into(), "live".into()]]
        );
    }
}

#[test]
fn v5_properties_pass_through() {
    require_tools();
    let broker = Broker::start_default();
    let sub = mosquitto_sub_spawn_fmt(
        &broker,
        "%t|%C|%R|%D|%P|%F|%p",
        &["-V", "mqttv5", "-q", "1", "-t", "mosq/props", "-C", "1"],
    );
    mosquitto_pub_ok(
        &broker,
        &[
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-t",
            "mosq/props",
            "-m",
            "{}",
            "-D",
            "publish",
            "content-type",
            "application/json",
            "-D",
            "publish",
            "response-topic",
            "mosq/reply",
            "-D",
            "publish",
            "correlation-data",
            "req-17",
            "-D",
            "publish",
            "user-property",
            "a",
            "1",
            "-D",
            "publish",
            "user-property",
            "b",
            "2",
            "-D",
            "publish",
            "payload-format-indicator",
            "1",
        ],
    );
    let (messages, _) = sub.finish();
    let expected = [
        "mosq/props",
        "application/json",
        "mosq/reply",
        "req-17",
        "a:1 b:2",
        "1",
        "{}",
    ];
    assert_eq!(messages, vec![expected.map(str::to_owned).to_vec()]);
}

#[test]
fn will_is_published_when_a_client_is_killed() {
    require_tools();
    let broker = Broker::start_default();
    for version in VERSIONS {
        let will_topic = format!("mosq/will/{version}");
        let watcher = mosquitto_sub_spawn(&broker, &["-V", version, "-t", &will_topic, "-C", "1"]);
        let victim = mosquitto_sub_spawn(
            &broker,
            &[
                "-V",
                version,
                "-t",
                "mosq/nothing",
                "--will-topic",
                &will_topic,
                "--will-payload",
                "killed",
                "--will-qos",
                "1",
            ],
        );
        // SIGKILL: no DISCONNECT reaches the broker, only a closed socket.
        victim.kill();
        let (messages, _) = watcher.finish();
        assert_eq!(
            messages,
            vec![vec![
                will_topic.clone(),
                "0".into(),
                "0".into(),
                "killed".into()
            ]]
        );
    }
}

#[test]
fn persistent_session_receives_what_was_published_while_offline() {
    require_tools();
    let broker = Broker::start_default();
    for version in VERSIONS {
        let id = unique_id(&format!("mosq-persist-{version}"));
        let topic = format!("mosq/persist/{version}");
        // -c: persistent session (for v5 with an infinite expiry); -E: exit after SUBACK.
        let session = ["-V", version, "-c", "-i", &id, "-q", "1", "-t", &topic];
        let first = mosquitto_sub_spawn(&broker, &[&session[..], &["-E"]].concat());
        let (_, out) = first.finish();
        assert!(out.success(), "{out:?}");

        mosquitto_pub_ok(
            &broker,
            &["-V", version, "-q", "1", "-t", &topic, "-m", "while away"],
        );

        // The queued message may arrive before the SUBACK, so do not wait for it.
        let back = mosquitto_sub_spawn_nowait(
            &broker,
            DEFAULT_FORMAT,
            &[&session[..], &["-C", "1"]].concat(),
        );
        let (messages, _) = back.finish();
        assert_eq!(
            messages,
            vec![vec![
                topic.clone(),
                "1".into(),
                "0".into(),
                "while away".into()
            ]]
        );
    }
}

#[test]
fn shared_subscription_splits_messages_between_members() {
    require_tools();
    let broker = Broker::start_default();
    let a = mosquitto_sub_spawn(
        &broker,
        &["-V", "mqttv5", "-q", "1", "-t", "$share/grp/mosq/shared"],
    );
    let b = mosquitto_sub_spawn(
        &broker,
        &["-V", "mqttv5", "-q", "1", "-t", "$share/grp/mosq/shared"],
    );
    const N: usize = 10;
    for i in 0..N {
        mosquitto_pub_ok(
            &broker,
            &[
                "-V",
                "mqttv5",
                "-q",
                "1",
                "-t",
                "mosq/shared",
                "-m",
                &i.to_string(),
            ],
        );
    }
    // Wait until both together have all N; each alone has fewer.
    let deadline = std::time::Instant::now() + e2e::WAIT;
    let (got_a, got_b) = loop {
        let (ma, mb) = (a.messages(), b.messages());
        if ma.len() + mb.len() >= N || std::time::Instant::now() > deadline {
            break (ma, mb);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut all: Vec<String> = got_a.iter().chain(&got_b).map(|m| m[3].clone()).collect();
    all.sort_by_key(|s| s.parse::<usize>().unwrap_or(usize::MAX));
    assert_eq!(
        all,
        (0..N).map(|i| i.to_string()).collect::<Vec<_>>(),
        "each message once"
    );
    assert!(
        !got_a.is_empty() && !got_b.is_empty(),
        "both members should get a share: a={got_a:?} b={got_b:?}"
    );
}

#[test]
fn publish_to_an_unreachable_port_fails_instead_of_hanging() {
    require_tools();
    let broker = Broker::start_default();
    let port = broker.port();
    drop(broker);
    // Sanity check of the helper itself: a failing tool reports failure within its timeout.
    let mut cmd = std::process::Command::new("mosquitto_pub");
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-t",
        "x",
        "-m",
        "y",
    ]);
    let out = e2e::process::run(&mut cmd, std::time::Duration::from_secs(20));
    assert!(!out.success(), "{out:?}");
}

#[test]
fn oversized_publish_is_refused_by_the_broker() {
    require_tools();
    let broker = Broker::start_with_clients("maxPacketSizeBytes: 1024");
    let sub = mosquitto_sub_spawn(&broker, &["-V", "mqttv311", "-t", "mosq/big", "-C", "1"]);
    let big = "x".repeat(2000);
    // 3.1.1 has no way to learn the limit up front; the broker closes the connection, which
    // mosquitto_pub reports for a QoS 1 publish that never gets its PUBACK.
    let out = mosquitto_pub(
        &broker,
        &["-V", "mqttv311", "-q", "1", "-t", "mosq/big", "-m", &big],
    );
    assert!(
        !out.success(),
        "an oversized QoS 1 publish must not succeed: {out:?}"
    );
    mosquitto_pub_ok(
        &broker,
        &["-V", "mqttv311", "-t", "mosq/big", "-m", "small"],
    );
    let (messages, _) = sub.finish();
    assert_eq!(
        messages,
        vec![vec![
            "mosq/big".to_owned(),
            "0".into(),
            "0".into(),
            "small".into()
        ]]
    );
}
