"""MQTT over WebSockets with paho-mqtt 2.1 (`transport="websockets"`, path /mqtt) against a
gatehouse WebSocket port (spec §1 `protocol: WebSockets`, scenario 5): v3.1.1 and v5
CONNECT and publish/subscribe at QoS 0/1/2, messages crossing between the WebSocket port and
the plain port of the same broker, and the upgrade refusals as a real client sees them.

paho is a third WebSocket client implementation (its own framing and handshake), so these check
interop. Byte-level cases (packets split across frames, text frames, raw MQTT on the WebSocket
port) are in tests/tests/websockets.rs; the `ws_broker` fixture is in conftest.py.
"""

import queue
import threading
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.client import MQTTv5, MQTTv311
from paho.mqtt.enums import CallbackAPIVersion

WAIT = 10.0
VERSIONS = [pytest.param(MQTTv311, id="v311"), pytest.param(MQTTv5, id="v5")]


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def new_client(version, transport: str, prefix: str) -> mqtt.Client:
    kwargs = {"clean_session": True} if version == MQTTv311 else {}
    return mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=uid(prefix),
        protocol=version,
        transport=transport,
        **kwargs,
    )


class Peer:
    """A connected paho client (WebSocket or TCP) with its network loop in a thread."""

    def __init__(self, host, port, version, transport="websockets"):
        self.version = version
        self.messages: "queue.Queue[mqtt.MQTTMessage]" = queue.Queue()
        self.subacks: "queue.Queue[tuple]" = queue.Queue()
        self.connected = threading.Event()
        self.connack = None
        self.c = new_client(version, transport, f"paho-{transport}")
        if transport == "websockets":
            self.c.ws_set_options(path="/mqtt")
        self.c.on_connect = self._on_connect
        self.c.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self.c.on_subscribe = lambda _c, _u, mid, codes, _p: self.subacks.put((mid, codes))
        self.c.connect(host, port, 30)
        self.c.loop_start()
        assert self.connected.wait(WAIT), "no CONNACK"

    def _on_connect(self, _c, _u, flags, reason_code, properties):
        self.connack = (flags, reason_code, properties)
        self.connected.set()

    def subscribe(self, topic, qos):
        result, mid = self.c.subscribe(topic, qos)
        assert result == mqtt.MQTT_ERR_SUCCESS
        got_mid, codes = self.subacks.get(timeout=WAIT)
        assert got_mid == mid
        assert [int(getattr(c, "value", c)) for c in codes] == [qos]

    def publish(self, topic, payload, qos):
        info = self.c.publish(topic, payload, qos=qos)
        info.wait_for_publish(timeout=WAIT)
        assert info.is_published(), f"publish to {topic} at QoS {qos} not completed"

    def expect_message(self) -> mqtt.MQTTMessage:
        try:
            return self.messages.get(timeout=WAIT)
        except queue.Empty:
            pytest.fail(f"no message within {WAIT}s")

    def disconnect(self):
        self.c.disconnect()
        self.c.loop_stop()


def round_trips(publisher: Peer, subscriber: Peer, prefix: str):
    """QoS 0, 1 and 2 from `publisher` to `subscriber` (subscribed at QoS 2), each arriving
    intact at the QoS it was published with."""
    subscriber.subscribe(f"{prefix}/#", 2)
    for qos in (0, 1, 2):
        topic, payload = f"{prefix}/{qos}", f"over websockets at QoS {qos}".encode()
        publisher.publish(topic, payload, qos)
        msg = subscriber.expect_message()
        assert (msg.topic, msg.payload, msg.qos) == (topic, payload, qos)


@pytest.mark.parametrize("version", VERSIONS)
def test_scenario_5_connect_over_websockets_gets_connack_success(ws_broker, version):
    c = Peer(ws_broker.host, ws_broker.port, version)
    assert c.connack[1] == 0
    c.disconnect()


@pytest.mark.parametrize("version", VERSIONS)
def test_publish_subscribe_qos_0_1_2_over_websockets(ws_broker, version):
    sub = Peer(ws_broker.host, ws_broker.port, version)
    pub = Peer(ws_broker.host, ws_broker.port, version)
    round_trips(pub, sub, f"paho/ws/{version}")
    pub.disconnect()
    sub.disconnect()


@pytest.mark.parametrize("version", VERSIONS)
def test_tcp_publisher_reaches_websocket_subscriber(ws_broker, version):
    sub = Peer(ws_broker.host, ws_broker.port, version)
    pub = Peer(ws_broker.host, ws_broker.tcp_port, version, transport="tcp")
    round_trips(pub, sub, f"paho/tcp-to-ws/{version}")
    pub.disconnect()
    sub.disconnect()


@pytest.mark.parametrize("version", VERSIONS)
def test_websocket_publisher_reaches_tcp_subscriber(ws_broker, version):
    sub = Peer(ws_broker.host, ws_broker.tcp_port, version, transport="tcp")
    pub = Peer(ws_broker.host, ws_broker.port, version)
    round_trips(pub, sub, f"paho/ws-to-tcp/{version}")
    pub.disconnect()
    sub.disconnect()


def test_v5_large_payload_over_websockets(ws_broker):
    sub = Peer(ws_broker.host, ws_broker.port, MQTTv5)
    sub.subscribe("paho/ws/big", 1)
    pub = Peer(ws_broker.host, ws_broker.port, MQTTv5)
    payload = bytes(i % 251 for i in range(512 * 1024))
    pub.publish("paho/ws/big", payload, 1)
    msg = sub.expect_message()
    assert len(msg.payload) == len(payload)
    assert msg.payload == payload
    pub.disconnect()
    sub.disconnect()


def test_scenario_5_wrong_path_is_refused(ws_broker):
    c = new_client(MQTTv5, "websockets", "paho-badpath")
    c.ws_set_options(path="/not-mqtt")
    with pytest.raises(mqtt.WebsocketConnectionError):
        c.connect(ws_broker.host, ws_broker.port, 30)
    # The same client on /mqtt is accepted: only the path was wrong.
    Peer(ws_broker.host, ws_broker.port, MQTTv5).disconnect()


def test_scenario_5_client_without_mqtt_subprotocol_is_refused(ws_broker):
    # [MQTT-6.0.0-3]: paho offers "mqtt" by default; take the header out.
    c = new_client(MQTTv5, "websockets", "paho-noproto")
    c.ws_set_options(
        path="/mqtt",
        headers=lambda h: {k: v for k, v in h.items() if k.lower() != "sec-websocket-protocol"},
    )
    with pytest.raises(mqtt.WebsocketConnectionError):
        c.connect(ws_broker.host, ws_broker.port, 30)
    Peer(ws_broker.host, ws_broker.port, MQTTv5).disconnect()
