"""End-to-end tests of the gatehouse broker with paho-mqtt 2.x (Eclipse's Python client),
for MQTT 3.1.1 and 5.0: connect, QoS 0/1/2 round trips, retained messages, wills, v5
property pass-through, persistent sessions and shared subscriptions.

These check interop with a third client implementation. Byte-level and misbehaving-client
cases are in the Rust tests (tests/tests/*.rs); broker start-up is in conftest.py.
"""

import queue
import threading
import time
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.client import MQTTv5, MQTTv311
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

WAIT = 10.0
VERSIONS = [pytest.param(MQTTv311, id="v311"), pytest.param(MQTTv5, id="v5")]


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Client:
    """A paho client running its network loop in a thread, with queues for what arrives."""

    def __init__(self, broker, version, client_id=None, clean=True, will=None,
                 connect_properties=None, keepalive=30, start_loop=True):
        self.version = version
        self.messages: "queue.Queue[mqtt.MQTTMessage]" = queue.Queue()
        self.subacks: "queue.Queue[tuple]" = queue.Queue()
        self.connected = threading.Event()
        self.connack = None
        kwargs = {}
        if version == MQTTv311:
            kwargs["clean_session"] = clean
        self.c = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id if client_id is not None else uid("paho"),
            protocol=version,
            **kwargs,
        )
        self.c.on_connect = self._on_connect
        self.c.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self.c.on_subscribe = lambda _c, _u, mid, codes, _p: self.subacks.put((mid, codes))
        if will is not None:
            self.c.will_set(**will)
        connect_kwargs = {}
        if version == MQTTv5:
            connect_kwargs["clean_start"] = clean
            connect_kwargs["properties"] = connect_properties
        self.c.connect(broker.host, broker.port, keepalive, **connect_kwargs)
        if start_loop:
            self.c.loop_start()
            assert self.connected.wait(WAIT), "no CONNACK"
        else:
            # Drive the loop by hand, so the socket is ours to close abruptly later.
            deadline = time.monotonic() + WAIT
            while not self.connected.is_set():
                assert time.monotonic() < deadline, "no CONNACK"
                self.c.loop(timeout=0.1)

    def _on_connect(self, _c, _u, flags, reason_code, properties):
        self.connack = (flags, reason_code, properties)
        self.connected.set()

    @property
    def reason_code(self):
        return self.connack[1]

    @property
    def session_present(self) -> bool:
        return bool(self.connack[0].session_present)

    def subscribe(self, topic, qos=1, **v5_options):
        if self.version == MQTTv5:
            result, mid = self.c.subscribe(topic, options=SubscribeOptions(qos=qos, **v5_options))
        else:
            result, mid = self.c.subscribe(topic, qos)
        assert result == mqtt.MQTT_ERR_SUCCESS
        got_mid, codes = self.subacks.get(timeout=WAIT)
        assert got_mid == mid
        return codes

    def publish(self, topic, payload, qos=1, retain=False, properties=None):
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        info.wait_for_publish(timeout=WAIT)
        assert info.is_published(), f"publish to {topic} not completed"

    def expect_message(self) -> mqtt.MQTTMessage:
        try:
            return self.messages.get(timeout=WAIT)
        except queue.Empty:
            pytest.fail(f"no message within {WAIT}s")

    def disconnect(self):
        self.c.disconnect()
        self.c.loop_stop()

    def kill(self):
        """Close the socket without DISCONNECT, as a crashed client would."""
        self.c.socket().close()


@pytest.mark.parametrize("version", VERSIONS)
def test_connect(broker, version):
    c = Client(broker, version)
    assert c.reason_code == 0
    assert not c.session_present
    c.disconnect()


def test_v5_empty_client_id_gets_an_assigned_identifier(broker):
    c = Client(broker, MQTTv5, client_id="")
    props = c.connack[2]
    assert getattr(props, "AssignedClientIdentifier", ""), f"CONNACK properties: {props}"
    c.disconnect()


def test_v5_connack_reports_server_keep_alive(broker_with):
    b = broker_with("maxKeepAliveSeconds: 15")
    c = Client(b, MQTTv5, keepalive=120)
    assert c.connack[2].ServerKeepAlive == 15
    c.disconnect()


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_qos_round_trip(broker, version, qos):
    sub = Client(broker, version)
    codes = sub.subscribe("paho/qos", qos=2)
    assert [int(getattr(c, "value", c)) for c in codes] == [2]
    pub = Client(broker, version)
    pub.publish("paho/qos", f"q{qos}".encode(), qos=qos)
    msg = sub.expect_message()
    assert (msg.topic, msg.payload, msg.qos, msg.retain) == ("paho/qos", f"q{qos}".encode(), qos, False)
    pub.disconnect()
    sub.disconnect()


@pytest.mark.parametrize("version", VERSIONS)
def test_retained_message_set_replaced_and_cleared(broker, version):
    pub = Client(broker, version)
    pub.publish("paho/retained", b"one", retain=True)
    pub.publish("paho/retained", b"two", retain=True)
    sub = Client(broker, version)
    sub.subscribe("paho/retained")
    msg = sub.expect_message()
    assert (msg.payload, msg.retain) == (b"two", True)
    sub.disconnect()

    pub.publish("paho/retained", b"", retain=True)
    later = Client(broker, version)
    later.subscribe("paho/retained")
    pub.publish("paho/retained", b"live")
    msg = later.expect_message()
    assert (msg.payload, msg.retain) == (b"live", False), "a cleared retained message came back"


@pytest.mark.parametrize("version", VERSIONS)
def test_will_on_abrupt_close_but_not_on_disconnect(broker, version):
    watcher = Client(broker, version)
    watcher.subscribe("paho/will/#")

    polite = Client(broker, version, will={"topic": "paho/will/polite", "payload": b"no", "qos": 1})
    polite.disconnect()

    crash = Client(broker, version, start_loop=False,
                   will={"topic": "paho/will/crash", "payload": b"yes", "qos": 1})
    crash.kill()

    msg = watcher.expect_message()
    # Had the polite client's will been sent, it would have come first.
    assert (msg.topic, msg.payload) == ("paho/will/crash", b"yes")


def test_v5_properties_pass_through(broker):
    sub = Client(broker, MQTTv5)
    sub.subscribe("paho/props")
    pub = Client(broker, MQTTv5)
    props = Properties(PacketTypes.PUBLISH)
    props.PayloadFormatIndicator = 1
    props.ContentType = "application/json"
    props.ResponseTopic = "paho/reply"
    props.CorrelationData = b"\x00\x01corr"
    props.UserProperty = [("a", "1"), ("b", "2"), ("a", "3")]
    pub.publish("paho/props", b'{"x":1}', properties=props)
    got = sub.expect_message().properties
    assert got.PayloadFormatIndicator == 1
    assert got.ContentType == "application/json"
    assert got.ResponseTopic == "paho/reply"
    assert got.CorrelationData == b"\x00\x01corr"
    assert got.UserProperty == [("a", "1"), ("b", "2"), ("a", "3")]


def test_v5_subscription_identifier_and_no_local(broker):
    me = Client(broker, MQTTv5)
    props = Properties(PacketTypes.SUBSCRIBE)
    props.SubscriptionIdentifier = 7
    result, mid = me.c.subscribe("paho/nl", options=SubscribeOptions(qos=1, noLocal=True),
                                 properties=props)
    assert result == mqtt.MQTT_ERR_SUCCESS
    assert me.subacks.get(timeout=WAIT)[0] == mid
    me.publish("paho/nl", b"mine")
    other = Client(broker, MQTTv5)
    other.publish("paho/nl", b"theirs")
    msg = me.expect_message()
    assert msg.payload == b"theirs", "No Local delivered the client's own message"
    assert msg.properties.SubscriptionIdentifier == [7]


@pytest.mark.parametrize("version", VERSIONS)
def test_persistent_session_gets_offline_messages(broker, version):
    client_id = uid("paho-persist")
    props = None
    if version == MQTTv5:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 60
    first = Client(broker, version, client_id=client_id, clean=False, connect_properties=props)
    first.subscribe("paho/offline", qos=1)
    first.disconnect()

    pub = Client(broker, version)
    pub.publish("paho/offline", b"queued", qos=1)

    again = Client(broker, version, client_id=client_id, clean=False, connect_properties=props)
    assert again.session_present
    msg = again.expect_message()
    assert (msg.topic, msg.payload, msg.qos) == ("paho/offline", b"queued", 1)


def test_v5_shared_subscription_splits_messages(broker):
    a = Client(broker, MQTTv5)
    a.subscribe("$share/workers/paho/jobs")
    b = Client(broker, MQTTv5)
    b.subscribe("$share/workers/paho/jobs")
    pub = Client(broker, MQTTv5)
    n = 20
    for i in range(n):
        pub.publish("paho/jobs", str(i).encode())

    got = {"a": [], "b": []}
    deadline = time.monotonic() + WAIT
    while len(got["a"]) + len(got["b"]) < n and time.monotonic() < deadline:
        for name, c in (("a", a), ("b", b)):
            try:
                got[name].append(int(c.messages.get(timeout=0.05).payload))
            except queue.Empty:
                pass
    assert sorted(got["a"] + got["b"]) == list(range(n)), f"each message exactly once: {got}"
    assert len(got["a"]) >= n // 4 and len(got["b"]) >= n // 4, f"unbalanced: {got}"


def test_v5_takeover_disconnects_the_old_client_with_0x8e(broker):
    client_id = uid("paho-takeover")
    reasons: "queue.Queue" = queue.Queue()
    old = Client(broker, MQTTv5, client_id=client_id)
    old.c.on_disconnect = lambda _c, _u, _f, rc, _p: reasons.put(rc)
    new = Client(broker, MQTTv5, client_id=client_id)
    rc = reasons.get(timeout=WAIT)
    assert rc.value == 0x8E, f"old client saw {rc}"
    old.c.loop_stop()
    new.disconnect()
