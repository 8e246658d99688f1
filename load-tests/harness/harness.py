#!/usr/bin/env python3
"""The side-by-side benchmark: Gatehouse against Debian's mosquitto 2.0 (issue 6).

Every scenario runs against both brokers in the same run, on the same machine, with the same
generator (`gatehouse-bench`), alternating Gatehouse, mosquitto, Gatehouse, mosquitto, ... for N
repetitions. Each measurement gets a freshly started broker. The harness then writes
`docs/benchmarks.md` (min / median / max per broker and the Gatehouse / mosquitto ratio) and the
raw results to `load-tests/results/<timestamp>.json`. Figures in the document come only from
that JSON.

Usage (from anywhere; `load-tests/bench.sh` is the usual entry point):

    python3 load-tests/harness/harness.py                # full run: 5 repetitions, release build
    python3 load-tests/harness/harness.py --quick        # 1 repetition, tiny counts (validation)
    python3 load-tests/harness/harness.py --quick --no-build --profile debug --out-dir /tmp/x

Python 3 standard library only. Linux only (/proc). Loopback only. Every process it starts is
stopped by PID when its measurement ends, and killed by the kernel if the harness dies
(PR_SET_PDEATHSIG). Nothing here asserts on timing: a scenario fails only when it measured
something other than what it says (QoS 1 messages lost, connections refused, a broker that did
not start).
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import datetime as dt
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HARNESS_VERSION = 1

GATEHOUSE = "gatehouse"
MOSQUITTO = "mosquitto"
BROKERS = (GATEHOUSE, MOSQUITTO)
LABEL = {GATEHOUSE: "Gatehouse", MOSQUITTO: "mosquitto"}

# Bounds on every wait (seconds). A run that takes longer has failed; nothing measures them.
BROKER_START_TIMEOUT = 20
SUB_READY_TIMEOUT = 30
STOP_TIMEOUT = 10


class ScenarioError(Exception):
    """This measurement is invalid (lost QoS 1 messages, refused connections, ...)."""


# ---------------------------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------------------------

# Each metric: key, label, unit, which direction is better, whether it is the headline figure.
THROUGHPUT_METRICS = [
    ("delivered_per_sec", "delivered msgs/s", "msg/s", "higher", True),
    ("drops", "messages not delivered", "msgs", "lower", False),
    ("broker_cpu_pct", "broker CPU (% of one core)", "%", "info", False),
    ("broker_peak_rss_mb", "broker peak RSS", "MB", "lower", False),
    ("generator_cpu_pct", "generator CPU (% of one core)", "%", "info", False),
]
LATENCY_METRICS = [
    ("p50_ms", "publish→deliver p50", "ms", "lower", True),
    ("p99_ms", "publish→deliver p99", "ms", "lower", True),
    ("p999_ms", "publish→deliver p99.9", "ms", "lower", False),
    ("delivered_per_sec", "delivered msgs/s (offered rate, not a capacity)", "msg/s", "info", False),
    ("drops", "messages not delivered", "msgs", "lower", False),
    ("broker_cpu_pct", "broker CPU (% of one core)", "%", "lower", False),
    ("generator_cpu_pct", "generator CPU (% of one core)", "%", "info", False),
]
CONNRATE_METRICS = [
    ("conn_per_sec", "TLS connections/s (TCP + handshake + CONNECT/CONNACK)", "conn/s", "higher", True),
    ("connect_p50_ms", "CONNECT→CONNACK p50 at 100 conn/s", "ms", "lower", True),
    ("connect_p99_ms", "CONNECT→CONNACK p99 at 100 conn/s", "ms", "lower", True),
    ("broker_cpu_pct", "broker CPU (% of one core, rate phase)", "%", "info", False),
    ("generator_cpu_pct", "generator CPU (% of one core, rate phase)", "%", "info", False),
]
REAUTH_METRICS = [
    ("reauth_per_sec", "re-authentications completed/s (AUTH 0x19 → AUTH 0x00)", "auth/s", "higher",
     True),
    ("reauth_fail", "re-authentication failures", "count", "lower", True),
    ("connection_lost", "connections lost", "count", "lower", False),
    ("broker_cpu_pct", "broker CPU (% of one core)", "%", "info", True),
    ("generator_cpu_pct", "generator CPU (% of one core)", "%", "info", False),
]
EXPIRY_METRICS = [
    ("p50_ms", "expiry → close p50", "ms", "lower", False),
    ("p99_ms", "expiry → close p99", "ms", "lower", True),
    ("max_ms", "expiry → close max", "ms", "lower", False),
    ("early", "closed before the reference instant (counted as 0 above)", "count", "info", False),
]
MEMORY_METRICS = [
    ("bytes_per_conn", "broker RSS per idle connection", "bytes", "lower", True),
    ("rss_before_kb", "broker RSS before connecting", "KiB", "info", False),
    ("rss_after_kb", "broker RSS with every connection open", "KiB", "info", False),
    ("generator_cpu_pct", "generator CPU (% of one core, connect phase)", "%", "info", False),
]

# Targets from issue 6, evaluated on the medians (full runs only).
TARGETS = {
    "p2p_qos0": ("delivered_per_sec", "ratio>=", 1.5, "throughput ≥ 1.5× mosquitto"),
    "p2p_qos1": ("delivered_per_sec", "ratio>=", 1.5, "throughput ≥ 1.5× mosquitto"),
    "latency": ("p99_ms", "ratio<=", 1.0, "p99 no worse than mosquitto"),
    "idle_memory_plain_10k": ("bytes_per_conn", "value<", 4096, "< 4 KB per plain connection"),
    "idle_memory_plain_50k": ("bytes_per_conn", "value<", 4096, "< 4 KB per plain connection"),
    "idle_memory_tls_10k": ("bytes_per_conn", "value<", 8192, "< 8 KB per TLS connection"),
    "idle_memory_tls_50k": ("bytes_per_conn", "value<", 8192, "< 8 KB per TLS connection"),
    "credential_expiry": ("p99_ms", "value<", 100, "expiry → close p99 < 100 ms"),
    "credential_expiry_split": ("p99_ms", "value<", 100, "expiry → close p99 < 100 ms"),
}

# Why some scenarios have no mosquitto column.
NO_REAUTH = "n/a — mosquitto cannot re-authenticate"
NO_EXPIRY = "n/a — mosquitto has no credential expiry"

# Authentication in the authsvc scenarios (see gatehouse_config()).
BENCH_USER, BENCH_PASSWORD = "bench", "bench-secret"
JWT_ISSUER, JWT_AUDIENCE, JWT_SECRET = "https://issuer.bench", "gatehouse.bench", "bench-jwt-issuer"
JWT_TOKENS = 16


def scenarios(quick: bool) -> list[dict]:
    """The scenario list. `quick` keeps every scenario's shape with tiny counts."""
    q = quick
    scs = [
        {
            "id": "p2p_qos0",
            "title": "Point-to-point throughput, QoS 0",
            "kind": "pubsub",
            "metrics": THROUGHPUT_METRICS,
            "desc": "1 publisher → 1 subscriber on one topic, QoS 0 both ways, 64-byte payload "
            "(8-byte `cnt64` sequence header + 56 bytes), publisher as fast as it can (`-I 0`), "
            "a fixed message count.",
            "subs": 1,
            "pubs": 1,
            "qos": 0,
            "messages": 2_000 if q else 500_000,
            "fanout": 1,
            "sub_filter": "bench/p2p",
            "pub_topic": "bench/p2p",
            "hdrs": "cnt64",
            "size": 56,
            "inflight": 1,
            "interval_ms": 0,
        },
        {
            "id": "p2p_qos1",
            "title": "Point-to-point throughput, QoS 1",
            "kind": "pubsub",
            "metrics": THROUGHPUT_METRICS,
            "desc": "1 publisher → 1 subscriber on one topic, QoS 1 both ways (64 messages in "
            "flight from the publisher), 64-byte payload (`cnt64` + 56 bytes), as fast as flow "
            "control allows, a fixed message count. Fails if any message is lost.",
            "subs": 1,
            "pubs": 1,
            "qos": 1,
            "messages": 1_000 if q else 200_000,
            "fanout": 1,
            "sub_filter": "bench/p2p",
            "pub_topic": "bench/p2p",
            "hdrs": "cnt64",
            "size": 56,
            "inflight": 64,
            "interval_ms": 0,
        },
        {
            "id": "fanout",
            "title": f"Fan-out 1 → {10 if q else 100}",
            "kind": "pubsub",
            "metrics": THROUGHPUT_METRICS,
            "desc": "1 publisher → N subscribers of the same topic, QoS 0, 64-byte payload "
            "(`cnt64` + 56 bytes), publisher as fast as it can; the figure counts deliveries "
            "(messages × N).",
            "subs": 10 if q else 100,
            "pubs": 1,
            "qos": 0,
            "messages": 200 if q else 5_000,
            "fanout": 10 if q else 100,
            "sub_filter": "bench/fanout",
            "pub_topic": "bench/fanout",
            "hdrs": "cnt64",
            "size": 56,
            "inflight": 1,
            "interval_ms": 0,
        },
        {
            "id": "fanin_shared",
            "title": f"Fan-in {5 if q else 50} → 1 shared subscription",
            "kind": "pubsub",
            "metrics": THROUGHPUT_METRICS,
            "desc": "N publishers (one topic each) → `$share/g/bench/fanin/#` held by 2 "
            "subscribers, QoS 1 both ways (16 in flight per publisher), 64-byte payload, a "
            "fixed total message count. Fails if any message is lost.",
            "subs": 2,
            "pubs": 5 if q else 50,
            "qos": 1,
            "messages": 1_000 if q else 200_000,
            "fanout": 1,
            "sub_filter": "$share/g/bench/fanin/#",
            "pub_topic": "bench/fanin/%i",
            "hdrs": "",
            "size": 64,
            "inflight": 16,
            "interval_ms": 0,
        },
        {
            "id": "latency",
            "title": "Publish → deliver latency at 2000 msg/s",
            "kind": "pubsub",
            "metrics": LATENCY_METRICS,
            "desc": "4 publishers, one message every 2 ms each (2000 msg/s in all, well below "
            "either broker's saturation), → 1 subscriber, QoS 1 both ways, 64-byte payload "
            "(`cnt64` + `ts` headers + 48 bytes). Latency is the subscriber's receive time minus "
            "the publisher's send time in the payload (same machine, same clock). "
            f"{'0.5' if q else '10'} s of traffic.",
            "subs": 1,
            "pubs": 4,
            "qos": 1,
            "messages": 1_000 if q else 20_000,
            "fanout": 1,
            "sub_filter": "bench/lat/#",
            "pub_topic": "bench/lat/%i",
            "hdrs": "cnt64,ts",
            "size": 48,
            "inflight": 16,
            "interval_ms": 2,
        },
        {
            "id": "tls_connrate",
            "title": "TLS connection rate",
            "kind": "connrate",
            "metrics": CONNRATE_METRICS,
            "desc": "K clients connect over TLS (TLS 1.3, ECDSA P-256 server certificate, no "
            "session resumption, server certificate not verified by the client as with "
            "emqtt-bench's default) with MQTT 5 CONNECT/CONNACK, offered at 5000/s (`-R "
            "5000`); the figure is connections completed per second, from the generator's start "
            "to the last CONNACK. A figure near 5000 means the broker kept up with the offer "
            "and its capacity may be higher. Then, on the same broker, "
            f"{20 if q else 200} more connections at 100/s give the CONNECT→CONNACK latency. "
            "No authentication: the baseline for the authsvc scenarios below.",
            "conns": 50 if q else 2_000,
            "offered_rate": 5_000,
            "probe_conns": 20 if q else 200,
            "probe_rate": 100,
            "tls": True,
        },
        {
            "id": "idle_memory_plain_10k",
            "title": f"Idle memory per connection, plain TCP, {100 if q else 10_000} connections",
            "kind": "memory",
            "metrics": MEMORY_METRICS,
            "desc": "K idle MQTT 5 connections (keep alive 300 s, no subscriptions) spread over "
            "16 loopback source addresses; the broker's VmRSS (from /proc/PID/status) once "
            "every connection is up and a settle time has passed, minus its VmRSS before, "
            "divided by K.",
            "conns": 100 if q else 10_000,
            "offered_rate": 2_000,
            "tls": False,
        },
        {
            "id": "idle_memory_tls_10k",
            "title": f"Idle memory per connection, TLS, {100 if q else 10_000} connections",
            "kind": "memory",
            "metrics": MEMORY_METRICS,
            "desc": "As the plain variant, over TLS (same certificate as the connection-rate "
            "scenario).",
            "conns": 100 if q else 10_000,
            "offered_rate": 2_000,
            "tls": True,
        },
        {
            "id": "idle_memory_plain_50k",
            "title": "Idle memory per connection, plain TCP, 50000 connections",
            "kind": "memory",
            "metrics": MEMORY_METRICS,
            "desc": "As the 10k variant with 50000 connections.",
            "conns": 50_000,
            "offered_rate": 2_000,
            "tls": False,
            "full_only": True,
        },
        {
            "id": "idle_memory_tls_50k",
            "title": "Idle memory per connection, TLS, 50000 connections",
            "kind": "memory",
            "metrics": MEMORY_METRICS,
            "desc": "As the 10k TLS variant with 50000 connections.",
            "conns": 50_000,
            "offered_rate": 2_000,
            "tls": True,
            "full_only": True,
        },
        {
            "id": "tls_connrate_authsvc",
            "title": "TLS connection rate through the authentication service (embedded)",
            "kind": "connrate",
            "metrics": CONNRATE_METRICS,
            "desc": "As the TLS connection rate, but the TLS port has an `authenticationRef` to a "
            "policy of one `Anonymous` method, so every CONNECT makes the frontend → authsvc gRPC "
            "round trip (`Authenticate`, plus the `Watch` registration) and nothing else: the "
            "method itself does no IO. Gatehouse runs in its default embedded mode (authsvc in "
            "the broker process, reached over loopback gRPC). mosquitto's nearest equivalent is "
            "a `password_file` (made with `mosquitto_passwd -b`, checked in-process, PBKDF2-"
            "SHA512) on its TLS listener (`per_listener_settings true`); it is not the same "
            "work — mosquitto has no out-of-process authentication — but it is what a mosquitto "
            "operator would deploy. Both get the same username and password.",
            "conns": 50 if q else 2_000,
            "offered_rate": 5_000,
            "probe_conns": 20 if q else 200,
            "probe_rate": 100,
            "tls": True,
            "auth": "anonymous",
            "credentials": True,
        },
        {
            "id": "tls_connrate_authsvc_split",
            "title": "TLS connection rate through the authentication service (split: authsvc as "
            "its own process)",
            "kind": "connrate",
            "metrics": CONNRATE_METRICS,
            "desc": "As the embedded variant, with `authsvc` as a separate process "
            "(`authsvc --config … --listen 127.0.0.1:0`) and the frontend pointed at it with "
            "`gatehouse --authsvc http://127.0.0.1:PORT` (plain HTTP/2 over loopback, one "
            "long-lived channel). Gatehouse's broker CPU is the frontend's plus authsvc's. "
            "mosquitto as in the embedded variant (measured again, A B A B, in this scenario).",
            "conns": 50 if q else 2_000,
            "offered_rate": 5_000,
            "probe_conns": 20 if q else 200,
            "probe_rate": 100,
            "tls": True,
            "auth": "anonymous",
            "credentials": True,
            "split": True,
        },
        {
            "id": "reauth_storm",
            "title": f"Re-authentication storm, {20 if q else 1_000} connections",
            "kind": "reauth",
            "metrics": REAUTH_METRICS,
            "brokers": (GATEHOUSE,),
            "no_mosquitto": NO_REAUTH,
            "no_mosquitto_detail": "Debian's mosquitto 2.0 as shipped has no MQTT v5 enhanced "
            "authentication method (that takes an authentication plugin written in C), so it "
            "cannot answer AUTH 0x19; there is nothing to compare with.",
            "desc": "K MQTT 5 connections (plain TCP, 16 loopback source addresses) authenticate "
            "with the `JWT` method (`CUSTOM-JWT`, RS256 tokens minted by the harness with "
            f"`openssl`, {JWT_TOKENS} distinct tokens shared round-robin, key from an issuer "
            "certificate; embedded authsvc), then each sends AUTH 0x19 (Re-authenticate) with "
            "its token every 200 ms (`--reauth-interval 200`), one at a time per connection. "
            "Offered: K × 5 re-authentications/s; each is a full signature check in authsvc "
            "and re-arms the connection's expiry timer. Once every connection is up, the "
            f"harness measures over {2 if q else 10} s (between two of the generator's "
            "once-a-second counter lines): completed re-authentications/s (AUTH 0x00 back) and "
            "the broker's CPU. A failure is any other answer (AUTH 0x18, DISCONNECT) or a "
            "connection lost with a re-authentication pending. Gatehouse only: mosquitto "
            "cannot re-authenticate.",
            "conns": 20 if q else 1_000,
            "offered_rate": 2_000,
            "reauth_interval_ms": 200,
            "storm_secs": 2 if q else 10,
            "auth": "jwt",
        },
        {
            "id": "credential_expiry",
            "title": "Credential-expiry timeliness (expiry → socket close)",
            "kind": "expiry",
            "metrics": EXPIRY_METRICS,
            "brokers": (GATEHOUSE,),
            "no_mosquitto": NO_EXPIRY,
            "no_mosquitto_detail": "mosquitto's password file has no notion of a credential "
            "that expires: an authenticated connection lives until it closes, so there is "
            "nothing to compare with.",
            "desc": f"K = {20 if q else 500} MQTT 5 connections (plain TCP) authenticated by an "
            f"`Anonymous` policy with `expirySeconds: {1 if q else 5}` (embedded authsvc; "
            "`expiryAction` left at its default, `Close`: the socket is closed without "
            "DISCONNECT), opened at 2000/s so their expiries fall within "
            f"{'0.01' if q else '0.25'} s of each other. The generator "
            f"(`--expect-lifetime {1 if q else 5}`) records, per connection, the instant it "
            "saw the server close the socket minus (the instant it wrote CONNECT + the "
            "lifetime). authsvc starts the lifetime when it decides, after CONNECT was "
            "written, so each figure is an upper bound: too high by at most that connection's "
            "CONNECT→CONNACK time (in the raw results). The expiry travels to the frontend in "
            "whole milliseconds (truncated), so a close up to 1 ms before the reference "
            "instant is possible; such closes are counted as *early* and enter the "
            "percentiles as 0. The run fails unless every connection was closed. Gatehouse "
            "only: mosquitto has no credential expiry.",
            "conns": 20 if q else 500,
            "offered_rate": 2_000,
            "lifetime_secs": 1 if q else 5,
            "auth": "expiry",
        },
    ]
    by_id = {sc["id"]: sc for sc in scs}
    for base in ("reauth_storm", "credential_expiry"):
        scs.append(split_variant(by_id[base]))
    return scs


def split_variant(sc: dict) -> dict:
    """`sc` with `authsvc` as its own process instead of embedded in the broker."""
    return {
        **sc,
        "id": sc["id"] + "_split",
        "title": sc["title"] + " (split: authsvc as its own process)",
        "desc": "As the embedded variant above, with `authsvc` as a separate process "
        "(`authsvc --config … --listen 127.0.0.1:0`) and the frontend pointed at it with "
        "`gatehouse --authsvc http://127.0.0.1:PORT`, so every decision and push crosses a "
        "process boundary. Gatehouse's broker CPU is the frontend's plus authsvc's.",
        "split": True,
    }


# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1
_libc = None


def _die_with_parent() -> None:
    """preexec_fn: the kernel sends SIGKILL to this child if the harness dies."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except Exception:  # noqa: BLE001 - best effort; the harness also stops children itself
        pass


_children: dict[int, subprocess.Popen] = {}


def spawn(args: list[str], **kw) -> subprocess.Popen:
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent, **kw)
    _children[proc.pid] = proc
    return proc


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
    """Signal one child by PID, wait (bounded), SIGKILL if it does not go; its exit status."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    _children.pop(proc.pid, None)
    return proc.returncode


def stop_all_children() -> None:
    for proc in list(_children.values()):
        stop(proc, signal.SIGKILL, 5)


def proc_status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise ScenarioError(f"no {field} in /proc/{pid}/status")


def proc_cpu_secs(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    fields = data[data.rindex(")") + 2 :].split()
    # utime and stime are fields 14 and 15 of the whole line (1-based), 12 and 13 after ")".
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tcp_ready(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def tls_ready(port: int) -> bool:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as raw:
            with ctx.wrap_socket(raw):
                return True
    except (OSError, ssl.SSLError):
        return False


def tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


# ---------------------------------------------------------------------------------------------
# Brokers
# ---------------------------------------------------------------------------------------------

TLS_SECRET = "bench-server-cert"


def auth_policy(auth: str, sc: dict | None = None) -> str:
    """The BrokerAuthentication `bench-auth` document of an authsvc scenario."""
    if auth == "anonymous":
        method = """\
    # Lets everyone in and does no IO: what is measured is the frontend ⇄ authsvc path.
    - method: Anonymous
      anonymousSettings: {allow: true}"""
    elif auth == "expiry":
        secs = sc["lifetime_secs"] if sc else "SECS"
        method = f"""\
    # Every "credential" expires this long after the decision.
    - method: Anonymous
      anonymousSettings: {{allow: true, expirySeconds: {secs}}}"""
    elif auth == "jwt":
        method = f"""\
    - method: JWT
      jwtSettings:
        authenticationMethods: [CUSTOM-JWT]
        issuer: {JWT_ISSUER}
        audiences: [{JWT_AUDIENCE}]
        issuerCertificates: [{JWT_SECRET}]   # <secrets-dir>/{JWT_SECRET}/issuer.crt"""
    else:
        raise AssertionError(auth)
    return f"""\
---
apiVersion: gatehouse.io/v1
kind: BrokerAuthentication
metadata: {{name: bench-auth}}
spec:
  authenticationMethods:
{method}
"""


def gatehouse_config(auth: str | None = None, sc: dict | None = None) -> str:
    # Both ports reference the policy in the authsvc scenarios.
    ref = ", authenticationRef: bench-auth" if auth else ""
    tls_ref = "\n      authenticationRef: bench-auth" if auth else ""
    policy = auth_policy(auth, sc) if auth else ""
    return f"""\
# Generated by load-tests/harness/harness.py for the side-by-side benchmark.
apiVersion: gatehouse.io/v1
kind: Broker
metadata: {{name: default}}
spec:
  advanced:
    clients:
      # Nothing may be dropped for lack of queue room during a throughput run.
      maxQueuedMessages: 10000000
  # As mosquitto's `persistence false`: state in memory only.
  persistence: {{durability: Disabled}}
---
apiVersion: gatehouse.io/v1
kind: BrokerListener
metadata: {{name: plain}}
spec:
  serviceType: ClusterIp
  ports:
    - {{port: 0, host: 127.0.0.1{ref}}}
---
apiVersion: gatehouse.io/v1
kind: BrokerListener
metadata: {{name: tls}}
spec:
  serviceType: LoadBalancer
  ports:
    - port: 0
      host: 127.0.0.1
      tls: {{mode: Manual, manual: {{secretRef: {TLS_SECRET}}}}}{tls_ref}
{policy}"""


def mosquitto_config(plain: int, tls: int, cert: Path, key: Path,
                     password_file: Path | None = None) -> str:
    lines = [
        "# Generated by load-tests/harness/harness.py for the side-by-side benchmark.",
        "persistence false",
    ]
    if password_file:
        # allow_anonymous / password_file below apply to the listener above them.
        lines.append("per_listener_settings true")
    else:
        lines.append("allow_anonymous true")
    lines += [
        # No per-connection log lines (Gatehouse logs at warn in the benchmark).
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "connection_messages false",
        # Nothing dropped for lack of queue room (0 = no limit; QoS 0 is never dropped then).
        "max_queued_messages 0",
        # As Gatehouse's maxReceiveMaximum; mosquitto's default of 20 would cap the publisher's
        # window below the 64 the scenarios ask for.
        "max_inflight_messages 1024",
        # Gatehouse sets TCP_NODELAY; mosquitto's default (Nagle on) would add latency.
        "set_tcp_nodelay true",
    ]
    if os.geteuid() == 0:
        # Otherwise mosquitto drops to user `mosquitto`, which cannot read our temp dir.
        lines.append("user root")
    lines.append(f"listener {plain} 127.0.0.1")
    if password_file:
        lines.append("allow_anonymous true")
    lines += [
        f"listener {tls} 127.0.0.1",
        f"certfile {cert}",
        f"keyfile {key}",
    ]
    if password_file:
        lines += ["allow_anonymous false", f"password_file {password_file}"]
    return "\n".join(lines) + "\n"


class Broker:
    """One broker for one measurement: a process (two with Gatehouse's split authsvc)."""

    def __init__(self, kind: str, bins: dict, workdir: Path, cert: Path, key: Path,
                 sc: dict | None = None, material: dict | None = None):
        self.kind = kind
        self.bins = bins
        self.dir = workdir
        self.cert = cert
        self.key = key
        sc = sc or {}
        self.sc = sc
        # The authsvc scenarios: Gatehouse's policy, its split mode, mosquitto's password file.
        self.auth: str | None = sc.get("auth")
        self.split = bool(sc.get("split"))
        self.material = material or {}
        self.proc: subprocess.Popen | None = None
        self.authsvc: subprocess.Popen | None = None
        self.plain_port = 0
        self.tls_port = 0
        self.log = workdir / "broker.log"
        self.authsvc_log = workdir / "authsvc.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.kind == GATEHOUSE:
            self._start_gatehouse()
        else:
            for _attempt in range(3):
                if self._start_mosquitto():
                    break
            else:
                raise ScenarioError(f"mosquitto did not start; log:\n{tail(self.log)}")
        deadline = time.monotonic() + BROKER_START_TIMEOUT
        while not tls_ready(self.tls_port):
            self._check_alive()
            if time.monotonic() > deadline:
                raise ScenarioError(f"{self.kind}: TLS port not serving; log:\n{tail(self.log)}")
            time.sleep(0.05)

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise ScenarioError(
                f"{self.kind} exited with {self.proc.returncode}; log:\n{tail(self.log)}"
            )
        if self.authsvc is not None and self.authsvc.poll() is not None:
            raise ScenarioError(
                f"authsvc exited with {self.authsvc.returncode}; log:\n{tail(self.authsvc_log)}"
            )

    def _start_authsvc(self, config: Path) -> str:
        """The split mode: `authsvc` as its own process on a free loopback port; its URL."""
        ready = self.dir / "authsvc-ready.json"
        with open(self.authsvc_log, "ab") as log:
            self.authsvc = spawn(
                [
                    str(self.bins["authsvc"]),
                    "--config", str(config),
                    "--listen", "127.0.0.1:0",
                    "--secrets-dir", str(self.dir / "secrets"),
                    "--ready-file", str(ready),
                    "--log", "warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + BROKER_START_TIMEOUT
        while not ready.exists():
            self._check_alive()
            if time.monotonic() > deadline:
                raise ScenarioError(f"authsvc not ready; log:\n{tail(self.authsvc_log)}")
            time.sleep(0.02)
        return "http://" + json.loads(ready.read_text())["listen"]

    def _start_gatehouse(self) -> None:
        config = self.dir / "gatehouse.yaml"
        config.write_text(gatehouse_config(self.auth, self.sc))
        secret = self.dir / "secrets" / TLS_SECRET
        secret.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.cert, secret / "tls.crt")
        shutil.copy(self.key, secret / "tls.key")
        if self.auth == "jwt":
            issuer = self.dir / "secrets" / JWT_SECRET
            issuer.mkdir(parents=True, exist_ok=True)
            shutil.copy(self.material["jwt_cert"], issuer / "issuer.crt")
        extra = []
        if self.split:
            extra = ["--authsvc", self._start_authsvc(config)]
        ready = self.dir / "ready.jsonl"
        with open(self.log, "ab") as log:
            self.proc = spawn(
                [
                    str(self.bins[GATEHOUSE]),
                    "--config", str(config),
                    "--data-dir", str(self.dir / "data"),
                    "--secrets-dir", str(self.dir / "secrets"),
                    "--ready-file", str(ready),
                    "--log", "warn",
                    *extra,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + BROKER_START_TIMEOUT
        while True:
            self._check_alive()
            if ready.exists():
                ports = {}
                for line in ready.read_text().splitlines():
                    if line.strip():
                        entry = json.loads(line)
                        ports[entry["listener"]] = int(entry["local_addr"].rsplit(":", 1)[1])
                self.plain_port, self.tls_port = ports["plain"], ports["tls"]
                return
            if time.monotonic() > deadline:
                raise ScenarioError(f"gatehouse not ready; log:\n{tail(self.log)}")
            time.sleep(0.02)

    def _start_mosquitto(self) -> bool:
        self.plain_port, self.tls_port = free_port(), free_port()
        if self.plain_port == self.tls_port:
            return False
        config = self.dir / "mosquitto.conf"
        password_file = self.material["password_file"] if self.sc.get("credentials") else None
        config.write_text(mosquitto_config(self.plain_port, self.tls_port, self.cert, self.key,
                                           password_file))
        with open(self.log, "ab") as log:
            self.proc = spawn(
                [str(self.bins[MOSQUITTO]), "-c", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + BROKER_START_TIMEOUT
        while not tcp_ready(self.plain_port):
            if self.proc.poll() is not None:
                # Most likely a port taken between free_port() and mosquitto's bind: retry.
                _children.pop(self.proc.pid, None)
                return False
            if time.monotonic() > deadline:
                raise ScenarioError(f"mosquitto not listening; log:\n{tail(self.log)}")
            time.sleep(0.02)
        return True

    def rss_kb(self) -> int:
        self._check_alive()
        return proc_status_kb(self.pid, "VmRSS")

    def peak_rss_kb(self) -> int:
        self._check_alive()
        return proc_status_kb(self.pid, "VmHWM")

    def cpu_secs(self) -> float:
        """The broker's CPU time so far: with a split authsvc, both processes'."""
        self._check_alive()
        return proc_cpu_secs(self.pid) + self.authsvc_cpu_secs()

    def authsvc_cpu_secs(self) -> float:
        return proc_cpu_secs(self.authsvc.pid) if self.authsvc is not None else 0.0

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
        if self.authsvc is not None:
            stop(self.authsvc)


# ---------------------------------------------------------------------------------------------
# The generator
# ---------------------------------------------------------------------------------------------

LINE = re.compile(r"^\S+ (\w+) total=(\d+) rate=")


class Gen:
    """`gatehouse-bench` in the background; its per-second counter lines are followed live."""

    def __init__(self, bench: Path, args: list[str], workdir: Path, name: str):
        self.args = args
        self.json_path = workdir / f"{name}.json"
        self.stderr_path = workdir / f"{name}.stderr"
        self.totals: dict[str, int] = {}
        self.changed_at: dict[str, float] = {}
        # Per counter: how many lines were read, and when the last one was (monotonic).
        self.line_seq: dict[str, int] = {}
        self.line_at: dict[str, float] = {}
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.eof = False
        full = [str(bench), *args, "--json", str(self.json_path)]
        self.cmdline = full
        with open(self.stderr_path, "wb") as err:
            self.proc = spawn(full, stdout=subprocess.PIPE, stderr=err, text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            with self.cond:
                self.lines.append(line)
                if len(self.lines) > 400:
                    del self.lines[:200]
                m = LINE.match(line)
                if m:
                    name, total = m.group(1), int(m.group(2))
                    now = time.monotonic()
                    if self.totals.get(name) != total:
                        self.changed_at[name] = now
                    self.totals[name] = total
                    self.line_seq[name] = self.line_seq.get(name, 0) + 1
                    self.line_at[name] = now
                self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def total(self, name: str) -> int:
        with self.cond:
            return self.totals.get(name, 0)

    def wait_until(self, pred, timeout: float, what: str) -> None:
        """Wait (bounded) until pred(totals) holds; raise if the process ends first."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred(self.totals):
                if self.eof:
                    raise ScenarioError(f"gatehouse-bench ended before {what}: {self.context()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ScenarioError(f"no {what} within {timeout}s: {self.context()}")
                self.cond.wait(min(left, 0.2))

    def next_line(self, name: str, timeout: float) -> tuple[float, int]:
        """Wait (bounded) for the next report line of counter `name`: (when read, its total).

        The generator prints a counter's line once a second while it moves, so the time
        between two such lines, as read here, is a measuring interval of its own, with the
        totals of both ends.
        """
        with self.cond:
            seq = self.line_seq.get(name, 0)
        self.wait_until(lambda _t: self.line_seq.get(name, 0) > seq, timeout,
                        f"a `{name}` line")
        with self.cond:
            return self.line_at[name], self.totals[name]

    def cpu_secs(self) -> float:
        """CPU time so far, from /proc (the process must still be running)."""
        try:
            return proc_cpu_secs(self.proc.pid)
        except (OSError, ValueError, IndexError) as e:
            raise ScenarioError(f"cannot read the generator's CPU time: {e}") from e

    def running(self) -> bool:
        return self.proc.poll() is None

    def finish(self, timeout: float) -> dict:
        """Wait (bounded) for exit; SIGTERM (the summary is still written) if it overruns."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        return self.terminate()

    def terminate(self) -> dict:
        code = stop(self.proc)
        self.reader.join(5)
        if code != 0:
            raise ScenarioError(f"gatehouse-bench exited with {code}: {self.context()}")
        try:
            return json.loads(self.json_path.read_text())
        except (OSError, ValueError) as e:
            raise ScenarioError(f"no --json summary ({e}): {self.context()}") from e

    def context(self) -> str:
        with self.cond:
            out = "\n".join(self.lines[-15:])
        return (
            f"\n  command: {' '.join(self.cmdline)}\n  stdout (last lines):\n{out}\n"
            f"  stderr:\n{tail(self.stderr_path, 10)}"
        )


def counter(summary: dict, name: str) -> int:
    return int(summary["counters"][name])


def window(summary: dict, name: str) -> tuple[float, float]:
    w = summary.get("windows_unix", {}).get(name)
    if not w:
        raise ScenarioError(f"no `{name}` window in the summary: {summary.get('args')}")
    return float(w["first"]), float(w["last"])


def cpu_secs(summary: dict) -> float:
    return float(summary["cpu"]["total_secs"])


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------


class Runner:
    def __init__(self, opts, bins: dict, workroot: Path, cert: Path, key: Path):
        self.opts = opts
        self.bins = bins
        self.workroot = workroot
        self.cert = cert
        self.key = key
        self.quick = opts.quick
        self.fd_hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        # Bounds for one generator run (seconds).
        self.run_timeout = 60 if self.quick else 300
        self.stall = 2 if self.quick else 5
        self.settle = 1 if self.quick else 3
        self.ifaddrs = ",".join(f"127.0.0.{i}" for i in range(1, 17))
        # Password file and JWT material for the authsvc scenarios, made on first use.
        self.material: dict = {}

    def auth_material(self, sc: dict) -> dict:
        if sc.get("credentials") and "password_file" not in self.material:
            self.material["password_file"] = make_password_file(self.workroot)
        if sc.get("auth") == "jwt" and "jwt_cert" not in self.material:
            self.material.update(make_jwt_material(self.workroot))
        return self.material

    def measure(self, sc: dict, broker_kind: str, rep: int) -> dict:
        workdir = self.workroot / f"{sc['id']}-{rep}-{broker_kind}"
        workdir.mkdir(parents=True)
        broker = Broker(broker_kind, self.bins, workdir, self.cert, self.key, sc,
                        self.auth_material(sc))
        try:
            broker.start()
            if sc["kind"] == "pubsub":
                return self.pubsub(sc, broker, workdir)
            if sc["kind"] == "connrate":
                return self.connrate(sc, broker, workdir)
            if sc["kind"] == "memory":
                return self.memory(sc, broker, workdir)
            if sc["kind"] == "reauth":
                return self.reauth(sc, broker, workdir)
            if sc["kind"] == "expiry":
                return self.expiry(sc, broker, workdir)
            raise AssertionError(sc["kind"])
        finally:
            broker.stop()

    def common(self, port: int) -> list[str]:
        return ["-h", "127.0.0.1", "-p", str(port), "-V", "5"]

    def pubsub(self, sc: dict, broker: Broker, workdir: Path) -> dict:
        bench = self.bins["bench"]
        expected = sc["messages"] * sc["fanout"]
        hdrs = ["--payload-hdrs", sc["hdrs"]] if sc["hdrs"] else []
        sub = Gen(
            bench,
            ["sub", *self.common(broker.plain_port), "-c", str(sc["subs"]), "-R", "2000",
             "-t", sc["sub_filter"], "-q", str(sc["qos"]), *hdrs,
             "--recv-limit", str(expected), "--duration", str(self.run_timeout)],
            workdir, "sub",
        )
        pub: Gen | None = None
        try:
            sub.wait_until(
                lambda t: t.get("sub", 0) + t.get("sub_fail", 0) >= sc["subs"],
                SUB_READY_TIMEOUT, f"{sc['subs']} SUBACKs",
            )
            if sub.total("sub") != sc["subs"]:
                raise ScenarioError(f"subscriptions failed: {sub.context()}")
            cpu0, t0 = broker.cpu_secs(), time.monotonic()
            sub_cpu0 = sub.cpu_secs()
            pub = Gen(
                bench,
                ["pub", *self.common(broker.plain_port), "-c", str(sc["pubs"]), "-R", "2000",
                 "-t", sc["pub_topic"], "-q", str(sc["qos"]), "-s", str(sc["size"]), *hdrs,
                 "-I", str(sc["interval_ms"]), "-F", str(sc["inflight"]),
                 "-L", str(sc["messages"]), "--duration", str(self.run_timeout)],
                workdir, "pub",
            )
            pub_json = pub.finish(self.run_timeout + 10)
            # The subscriber stops by itself at --recv-limit. If messages were lost it never
            # gets there: stop it once its `recv` total has not moved for a while (its counter
            # lines come once a second).
            pub_end = time.monotonic()
            deadline = pub_end + self.run_timeout
            while sub.running() and time.monotonic() < deadline:
                last = max(sub.changed_at.get("recv", pub_end), pub_end)
                if time.monotonic() - last > self.stall + 1:
                    break
                time.sleep(0.05)
            sub_json = sub.terminate()
            cpu1, t1 = broker.cpu_secs(), time.monotonic()
            peak_rss = broker.peak_rss_kb()
        finally:
            stop(sub.proc)
            if pub is not None:
                stop(pub.proc)
        sent = counter(pub_json, "pub")
        recv = counter(sub_json, "recv")
        problems = []
        if sent != sc["messages"]:
            problems.append(f"published {sent} of {sc['messages']}")
        if counter(pub_json, "connect_succ") != sc["pubs"]:
            problems.append(f"{counter(pub_json, 'connect_fail')} publishers failed to connect")
        for c in ("pub_fail", "connection_lost"):
            if counter(pub_json, c) or counter(sub_json, c):
                problems.append(f"{c}: pub {counter(pub_json, c)}, sub {counter(sub_json, c)}")
        if sc["qos"] >= 1:
            if counter(pub_json, "pub_succ") != sent:
                problems.append(f"PUBACKs {counter(pub_json, 'pub_succ')} of {sent}")
            if recv < sent * sc["fanout"]:
                problems.append(f"QoS {sc['qos']}: delivered {recv} < sent {sent * sc['fanout']}")
        if problems:
            raise ScenarioError("; ".join(problems))
        first_pub, _ = window(pub_json, "pub")
        _, last_recv = window(sub_json, "recv")
        span = max(last_recv - first_pub, 1e-6)
        # Both CPU figures cover the same wall-clock interval: from just before the publisher
        # starts to just after the subscriber has exited. The publisher's CPU is all inside it;
        # the subscriber's is counted from the start of that interval.
        wall = max(t1 - t0, 1e-6)
        gen_cpu = cpu_secs(pub_json) + cpu_secs(sub_json) - sub_cpu0
        metrics = {
            "delivered_per_sec": recv / span,
            "drops": sent * sc["fanout"] - recv,
            "broker_cpu_pct": 100 * (cpu1 - cpu0) / wall,
            "broker_peak_rss_mb": peak_rss / 1024,
            "generator_cpu_pct": 100 * gen_cpu / wall,
        }
        lat = sub_json.get("latency_ms")
        if "p50_ms" in {m[0] for m in sc["metrics"]}:
            if not lat:
                raise ScenarioError("no latency samples (ts header missing?)")
            metrics.update(p50_ms=lat["p50"], p99_ms=lat["p99"], p999_ms=lat["p999"])
        return {
            "metrics": metrics,
            "checks": {
                "sent": sent,
                "expected_deliveries": sent * sc["fanout"],
                "delivered": recv,
                "cnt64_gap": counter(sub_json, "cnt64_gap"),
                "cnt64_dup": counter(sub_json, "cnt64_dup"),
                "pub_overrun": counter(pub_json, "pub_overrun"),
                "window_secs": span,
                "cpu_interval_secs": wall,
                "broker_cpu_secs": cpu1 - cpu0,
                "generator_cpu_secs": gen_cpu,
            },
            "generator": {"pub": pub_json, "sub": sub_json},
        }

    def conn_gen(self, sc: dict, broker: Broker, workdir: Path, name: str = "conn",
                 conns: int | None = None, rate: int | None = None,
                 extra: list[str] | None = None) -> Gen:
        tls = sc.get("tls", False)
        port = broker.tls_port if tls else broker.plain_port
        creds = ["-u", BENCH_USER, "-P", BENCH_PASSWORD] if sc.get("credentials") else []
        return Gen(
            self.bins["bench"],
            ["conn", *self.common(port), *(["-S"] if tls else []), *creds,
             "-c", str(conns or sc["conns"]), "-R", str(rate or sc["offered_rate"]),
             "-k", "300", "--ifaddr", self.ifaddrs, *(extra or []),
             "--duration", str(self.run_timeout)],
            workdir, name,
        )

    def wait_connected(self, gen: Gen, n: int) -> None:
        gen.wait_until(
            lambda t: t.get("connect_succ", 0) + t.get("connect_fail", 0) >= n,
            self.run_timeout, f"{n} connections",
        )
        if gen.total("connect_succ") != n:
            raise ScenarioError(
                f"{gen.total('connect_fail')} of {n} connections failed: {gen.context()}"
            )

    def connrate(self, sc: dict, broker: Broker, workdir: Path) -> dict:
        # Phase 1, the rate: K connections offered at a rate above what either broker takes.
        cpu0, t0 = broker.cpu_secs(), time.monotonic()
        acpu0 = broker.authsvc_cpu_secs()
        gen = self.conn_gen(sc, broker, workdir)
        try:
            self.wait_connected(gen, sc["conns"])
            cpu1, t1 = broker.cpu_secs(), time.monotonic()
            acpu1 = broker.authsvc_cpu_secs()
            gen_cpu = gen.cpu_secs()
            summary = gen.terminate()
        finally:
            stop(gen.proc)
        n = counter(summary, "connect_succ")
        if n != sc["conns"] or counter(summary, "connect_fail"):
            raise ScenarioError(f"connected {n} of {sc['conns']}")
        _, last = window(summary, "connect_succ")
        span = max(last - float(summary["started_at_unix"]), 1e-6)
        # Phase 2, the latency: once the broker has settled, a few connections at a low rate,
        # so CONNECT→CONNACK shows the path itself rather than a queue.
        time.sleep(self.settle)
        probe = self.conn_gen(sc, broker, workdir, "probe", sc["probe_conns"], sc["probe_rate"])
        try:
            self.wait_connected(probe, sc["probe_conns"])
            probe_summary = probe.terminate()
        finally:
            stop(probe.proc)
        lat = probe_summary.get("connect_latency_ms")
        if not lat or lat["count"] != sc["probe_conns"]:
            raise ScenarioError(f"no CONNECT→CONNACK latency for every probe connection: {lat}")
        return {
            "metrics": {
                "conn_per_sec": n / span,
                "connect_p50_ms": lat["p50"],
                "connect_p99_ms": lat["p99"],
                # Both over the same interval: generator start to all connected (as seen in
                # its once-a-second report, so up to a second of idle time is included).
                "broker_cpu_pct": 100 * (cpu1 - cpu0) / max(t1 - t0, 1e-6),
                "generator_cpu_pct": 100 * gen_cpu / max(t1 - t0, 1e-6),
            },
            "checks": {
                "connected": n,
                "window_secs": span,
                "cpu_interval_secs": t1 - t0,
                "broker_cpu_secs": cpu1 - cpu0,
                # Split mode: the part of broker_cpu_secs that was authsvc's.
                "authsvc_cpu_secs": acpu1 - acpu0,
                "generator_cpu_secs": gen_cpu,
                "connect_latency_ms_at_offered_rate": summary.get("connect_latency_ms"),
                "probe_connect_latency_ms": lat,
            },
            "generator": {"conn": summary, "probe": probe_summary},
        }

    def reauth(self, sc: dict, broker: Broker, workdir: Path) -> dict:
        gen = self.conn_gen(
            sc, broker, workdir,
            extra=["--auth-method", "CUSTOM-JWT",
                   "--auth-data-file", str(self.material["jwt_tokens"]),
                   "--reauth-interval", str(sc["reauth_interval_ms"])],
        )
        try:
            self.wait_connected(gen, sc["conns"])
            # The interval between two `reauth_succ` lines, every connection up meanwhile.
            line_timeout = sc["storm_secs"] + 10
            t0, n0 = gen.next_line("reauth_succ", line_timeout)
            cpu0, gcpu0 = broker.cpu_secs(), gen.cpu_secs()
            time.sleep(sc["storm_secs"])
            t1, n1 = gen.next_line("reauth_succ", line_timeout)
            cpu1, gcpu1 = broker.cpu_secs(), gen.cpu_secs()
            summary = gen.terminate()
        finally:
            stop(gen.proc)
        if counter(summary, "connect_succ") != sc["conns"]:
            raise ScenarioError(f"connected {counter(summary, 'connect_succ')} of {sc['conns']}")
        wall = max(t1 - t0, 1e-6)
        return {
            "metrics": {
                "reauth_per_sec": (n1 - n0) / wall,
                "reauth_fail": counter(summary, "reauth_fail"),
                "connection_lost": counter(summary, "connection_lost"),
                "broker_cpu_pct": 100 * (cpu1 - cpu0) / wall,
                "generator_cpu_pct": 100 * (gcpu1 - gcpu0) / wall,
            },
            "checks": {
                "connected": counter(summary, "connect_succ"),
                "reauth_succ_total": counter(summary, "reauth_succ"),
                "reauth_succ_in_interval": n1 - n0,
                "interval_secs": wall,
                "offered_per_sec": sc["conns"] * 1000 / sc["reauth_interval_ms"],
                "broker_cpu_secs": cpu1 - cpu0,
            },
            "generator": {"conn": summary},
        }

    def expiry(self, sc: dict, broker: Broker, workdir: Path) -> dict:
        lifetime = sc["lifetime_secs"]
        gen = self.conn_gen(sc, broker, workdir,
                            extra=["--expect-lifetime", str(lifetime)])
        try:
            self.wait_connected(gen, sc["conns"])
            # Every connection is closed by the broker, so the generator ends by itself.
            summary = gen.finish(lifetime + self.run_timeout)
        finally:
            stop(gen.proc)
        e = summary.get("expiry_delay_ms") or {}
        closed = int(e.get("count", 0))
        if closed != sc["conns"] or counter(summary, "connection_lost") != sc["conns"]:
            raise ScenarioError(
                f"{closed} of {sc['conns']} connections were closed by the broker "
                f"(connection_lost {counter(summary, 'connection_lost')})"
            )
        return {
            "metrics": {
                "p50_ms": e["p50"],
                "p99_ms": e["p99"],
                "max_ms": e["max"],
                "early": e["early"],
            },
            "checks": {
                "closed": closed,
                "min_ms": e["min"],
                "lifetime_secs": lifetime,
                "connect_latency_ms": summary.get("connect_latency_ms"),
            },
            "generator": {"conn": summary},
        }

    def memory(self, sc: dict, broker: Broker, workdir: Path) -> dict:
        time.sleep(self.settle)
        before = broker.rss_kb()
        t0 = time.monotonic()
        gen = self.conn_gen(sc, broker, workdir)
        try:
            self.wait_connected(gen, sc["conns"])
            gen_cpu, t1 = gen.cpu_secs(), time.monotonic()
            time.sleep(self.settle)
            after = broker.rss_kb()
            still = gen.total("connection_lost")
            summary = gen.terminate()
        finally:
            stop(gen.proc)
        if still or counter(summary, "connection_lost"):
            raise ScenarioError(f"{counter(summary, 'connection_lost')} connections were lost")
        return {
            "metrics": {
                "bytes_per_conn": (after - before) * 1024 / sc["conns"],
                "rss_before_kb": before,
                "rss_after_kb": after,
                "generator_cpu_pct": 100 * gen_cpu / max(t1 - t0, 1e-6),
            },
            "checks": {"connected": counter(summary, "connect_succ"), "settle_secs": self.settle},
            "generator": {"conn": summary},
        }


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def sh(args: list[str], **kw) -> str:
    try:
        return subprocess.run(args, capture_output=True, text=True, check=False, **kw).stdout.strip()
    except OSError:
        return ""


def machine() -> dict:
    cpu_model, processors = "", 0
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and not cpu_model:
                cpu_model = line.split(":", 1)[1].strip()
            if line.startswith("processor"):
                processors += 1
    mem_kb = proc_meminfo("MemTotal")
    os_release = {}
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if "=" in line:
                k, v = line.split("=", 1)
                os_release[k] = v.strip('"')
    except OSError:
        pass
    try:
        debian = Path("/etc/debian_version").read_text().strip()
    except OSError:
        debian = ""
    return {
        "cpu_model": cpu_model,
        "cores": processors,
        "ram_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": os_release.get("PRETTY_NAME", ""),
        "debian_version": debian,
        "open_files_hard_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
        "python": platform.python_version(),
    }


def proc_meminfo(field: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return ""


def git_info() -> dict:
    commit = sh(["git", "-C", str(REPO), "rev-parse", "HEAD"])
    dirty = sh(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"])
    return {"commit": commit, "dirty_files": len(dirty.splitlines()) if dirty else 0}


def target_dir() -> Path:
    env = os.environ.get("CARGO_TARGET_DIR")
    return Path(env) if env else REPO / "target"


def build(profile: str) -> None:
    cmd = ["cargo", "build", "-p", "frontend", "--bin", "gatehouse",
           "-p", "authsvc", "--bin", "authsvc",
           "-p", "load-tests", "--bin", "gatehouse-bench"]
    if profile == "release":
        cmd.insert(2, "--release")
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)


def make_cert(dir: Path) -> tuple[Path, Path]:
    cert, key = dir / "server.crt", dir / "server.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return cert, key


def make_password_file(dir: Path) -> Path:
    """mosquitto's password file for the authsvc connection-rate scenarios."""
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    path = dir / "mosquitto.passwd"
    try:
        subprocess.run([tool, "-c", "-b", str(path), BENCH_USER, BENCH_PASSWORD],
                       check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        raise ScenarioError(f"mosquitto_passwd failed ({e}); it comes with Debian's mosquitto")
    return path


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt_material(dir: Path) -> dict:
    """An RS256 issuer (key + certificate) and JWT_TOKENS tokens signed by it, valid 4 h."""
    key, cert = dir / "jwt-issuer.key", dir / "jwt-issuer.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "2", "-subj", "/CN=issuer.bench"],
        check=True, capture_output=True,
    )
    now = int(time.time())
    header = b64url(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    tokens = []
    for i in range(JWT_TOKENS):
        claims = {"iss": JWT_ISSUER, "aud": JWT_AUDIENCE, "sub": f"bench-{i}",
                  "nbf": now - 60, "exp": now + 4 * 3600}
        signing_input = f"{header}.{b64url(json.dumps(claims).encode())}"
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(key)],
                             input=signing_input.encode(), check=True,
                             capture_output=True).stdout
        tokens.append(f"{signing_input}.{b64url(sig)}")
    path = dir / "jwt-tokens.txt"
    path.write_text("\n".join(tokens) + "\n")
    return {"jwt_cert": cert, "jwt_tokens": path}


def find_mosquitto(explicit: str | None) -> Path:
    candidates = [explicit] if explicit else ["/usr/sbin/mosquitto", shutil.which("mosquitto")]
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return Path(c)
    sys.exit(
        "harness: mosquitto not found (looked at "
        f"{[c for c in candidates if c]}): install Debian's mosquitto "
        "(`apt-get install mosquitto`; scripts/test.sh installs it) or pass --mosquitto-bin"
    )


def summarize(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"min": min(values), "median": statistics.median(values), "max": max(values),
            "n": len(values)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="1 repetition and tiny counts: validates the harness, measures nothing")
    ap.add_argument("--reps", type=int, help="repetitions per broker (default 5; 1 with --quick)")
    ap.add_argument("--profile", choices=("release", "debug"), default="release",
                    help="cargo profile of the binaries (debug only for the smoke test)")
    ap.add_argument("--no-build", action="store_true", help="use existing binaries")
    ap.add_argument("--gatehouse-bin", help="default: <target>/<profile>/gatehouse")
    ap.add_argument("--bench-bin", help="default: <target>/<profile>/gatehouse-bench")
    ap.add_argument("--authsvc-bin", help="default: <target>/<profile>/authsvc (split mode)")
    ap.add_argument("--mosquitto-bin", help="default: /usr/sbin/mosquitto, else PATH")
    ap.add_argument("--out-dir", type=Path,
                    help="write benchmarks.md and results/<timestamp>.json here instead of "
                    "docs/ and load-tests/results/")
    ap.add_argument("--no-write", action="store_true",
                    help="write nothing into the repository (a temp dir unless --out-dir)")
    ap.add_argument("--scenarios", help="comma-separated scenario ids (default: all)")
    ap.add_argument("--keep-work", action="store_true", help="keep broker logs and configs")
    opts = ap.parse_args()
    reps = opts.reps if opts.reps is not None else (1 if opts.quick else 5)
    if reps < 1:
        ap.error("--reps must be at least 1")

    mosquitto = find_mosquitto(opts.mosquitto_bin)
    if not shutil.which("openssl"):
        sys.exit("harness: openssl not found (apt-get install openssl)")
    if not opts.no_build:
        build(opts.profile)
    tdir = target_dir() / opts.profile
    bins = {
        GATEHOUSE: Path(opts.gatehouse_bin) if opts.gatehouse_bin else tdir / "gatehouse",
        "bench": Path(opts.bench_bin) if opts.bench_bin else tdir / "gatehouse-bench",
        "authsvc": Path(opts.authsvc_bin) if opts.authsvc_bin else tdir / "authsvc",
        MOSQUITTO: mosquitto,
    }
    for name, path in bins.items():
        # authsvc is needed only by the split-mode scenarios (checked once the list is known).
        if name != "authsvc" and not path.is_file():
            sys.exit(f"harness: {name} binary {path} not found (build it, or drop --no-build)")

    # Children inherit this: 10k+ sockets in one process need more than 1024 descriptors.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    if opts.out_dir:
        out_dir = opts.out_dir
        doc_path, results_dir = out_dir / "benchmarks.md", out_dir / "results"
    elif opts.no_write:
        out_dir = Path(tempfile.mkdtemp(prefix="gatehouse-bench-out-"))
        doc_path, results_dir = out_dir / "benchmarks.md", out_dir / "results"
    else:
        doc_path, results_dir = REPO / "docs" / "benchmarks.md", REPO / "load-tests" / "results"

    command = os.environ.get("GATEHOUSE_BENCH_COMMAND") or " ".join(
        ["python3", "load-tests/harness/harness.py", *sys.argv[1:]]
    )
    started = dt.datetime.now(dt.timezone.utc)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    wanted = set(opts.scenarios.split(",")) if opts.scenarios else None
    all_sc = scenarios(opts.quick)
    if wanted:
        unknown = wanted - {s["id"] for s in all_sc}
        if unknown:
            ap.error(f"unknown scenario ids {sorted(unknown)}")
        all_sc = [s for s in all_sc if s["id"] in wanted]
    if any(s.get("split") for s in all_sc) and not bins["authsvc"].is_file():
        sys.exit(f"harness: authsvc binary {bins['authsvc']} not found (the split-mode scenarios "
                 "need it: build it, or drop --no-build)")

    results = {
        "harness_version": HARNESS_VERSION,
        "quick": opts.quick,
        "repetitions": reps,
        "profile": opts.profile,
        "command": command,
        "started_utc": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "loadavg_start": loadavg(),
        "git": git_info(),
        "versions": {
            GATEHOUSE: sh([str(bins[GATEHOUSE]), "--version"]),
            MOSQUITTO: (sh([str(mosquitto), "-h"]).splitlines() or [""])[0],
            "rustc": sh(["rustc", "--version"]),
            "openssl": sh(["openssl", "version"]),
        },
        "configs": {GATEHOUSE: gatehouse_config(),
                    MOSQUITTO: mosquitto_config(0, 0, Path("server.crt"), Path("server.key"))
                    .replace("listener 0 ", "listener PORT "),
                    # The authsvc scenarios: the policy each one adds to Gatehouse's
                    # configuration (referenced by both ports), and mosquitto's password file.
                    f"{GATEHOUSE} authsvc policies": {
                        a: auth_policy(a) for a in ("anonymous", "jwt", "expiry")},
                    f"{MOSQUITTO} password_file": mosquitto_config(
                        0, 0, Path("server.crt"), Path("server.key"),
                        Path("mosquitto.passwd")).replace("listener 0 ", "listener PORT ")},
        "scenarios": [],
    }

    interrupted = False

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    failed = False
    workroot = Path(tempfile.mkdtemp(prefix="gatehouse-harness-"))
    try:
        cert, key = make_cert(workroot)
        runner = Runner(opts, bins, workroot, cert, key)
        for sc in all_sc:
            entry = {k: v for k, v in sc.items() if k != "metrics"}
            entry["metrics"] = [
                {"key": k, "label": lbl, "unit": u, "better": b, "headline": h}
                for (k, lbl, u, b, h) in sc.get("metrics", [])
            ]
            results["scenarios"].append(entry)
            if sc["kind"] == "todo":
                entry["status"] = "todo"
                continue
            if sc.get("full_only") and opts.quick:
                entry["status"] = "not run"
                entry["reason"] = "full run only (not part of --quick)"
                continue
            if sc["kind"] == "memory" and runner.fd_hard < sc["conns"] + 1000:
                entry["status"] = "not run"
                entry["reason"] = (
                    f"open-files hard limit is {runner.fd_hard}, {sc['conns']} connections need "
                    f"at least {sc['conns'] + 1000} per process; raise it (as root: "
                    "`ulimit -Hn 65536` in the shell that runs the harness) and rerun"
                )
                print(f"== {sc['id']}: NOT RUN: {entry['reason']}", flush=True)
                continue
            brokers = sc.get("brokers", BROKERS)
            entry["runs"] = {b: [] for b in brokers}
            for rep in range(reps):
                for b in brokers:  # A B A B ...
                    print(f"== {sc['id']} rep {rep + 1}/{reps} {b} ...", end=" ", flush=True)
                    t = time.monotonic()
                    try:
                        run = runner.measure(sc, b, rep)
                        run["error"] = None
                        head = {k: round(v, 3) for k, v in run["metrics"].items()
                                if k in {m["key"] for m in entry["metrics"] if m["headline"]}}
                        print(f"{head} ({time.monotonic() - t:.1f}s)", flush=True)
                    except ScenarioError as e:
                        run = {"metrics": {}, "error": str(e)}
                        failed = True
                        print(f"FAILED ({time.monotonic() - t:.1f}s): {e}", flush=True)
                    except Exception:  # noqa: BLE001 - a harness bug: record it, go on, fail
                        trace = traceback.format_exc()
                        run = {"metrics": {}, "error": f"harness error: {trace}"}
                        failed = True
                        print(f"HARNESS ERROR ({time.monotonic() - t:.1f}s):\n{trace}", flush=True)
                    run["rep"] = rep + 1
                    entry["runs"][b].append(run)
            entry["summary"] = {b: {} for b in BROKERS}
            for b in brokers:
                ok = [r for r in entry["runs"][b] if r["error"] is None]
                entry["summary"][b] = {
                    m["key"]: summarize([r["metrics"][m["key"]] for r in ok
                                         if m["key"] in r["metrics"]])
                    for m in entry["metrics"]
                }
            errors = sum(1 for b in brokers for r in entry["runs"][b] if r["error"])
            entry["status"] = "failed" if errors else "measured"
    except KeyboardInterrupt as e:
        interrupted = True
        failed = True
        print(f"\nharness: interrupted ({e}); writing what was measured", flush=True)
    finally:
        stop_all_children()
        if not opts.keep_work:
            shutil.rmtree(workroot, ignore_errors=True)
        else:
            print(f"harness: work files kept in {workroot}")

    results["finished_utc"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    results["loadavg_end"] = loadavg()
    results["interrupted"] = interrupted
    results_dir.mkdir(parents=True, exist_ok=True)
    json_path = results_dir / f"{stamp}.json"
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    doc_path.parent.mkdir(parents=True, exist_ok=True)
    rel_json = os.path.relpath(json_path, doc_path.parent)
    doc_path.write_text(render(results, rel_json, json_path))
    print(f"harness: wrote {json_path} and {doc_path}", flush=True)
    if failed:
        print("harness: some scenarios FAILED (see above and the document)", flush=True)
    return 1 if failed else 0


# ---------------------------------------------------------------------------------------------
# The document
# ---------------------------------------------------------------------------------------------


def fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "–"
    if unit in ("msg/s", "conn/s", "auth/s", "bytes", "KiB", "msgs", "count"):
        return f"{v:,.0f}"
    if unit == "ms":
        return f"{v:.3f}"
    if unit == "MB":
        return f"{v:.1f}"
    return f"{v:.1f}"


def render(res: dict, rel_json: str, json_path: Path) -> str:
    m = res["machine"]
    out: list[str] = []
    w = out.append
    w("# Benchmarks: Gatehouse and mosquitto side by side")
    w("")
    w("<!-- Generated by load-tests/harness/harness.py; do not edit by hand. Every figure below "
      "comes from the raw results file named underneath. -->")
    w("")
    if res["quick"]:
        w("> **QUICK VALIDATION RUN — these are not benchmark results.** This file was written by "
          "`--quick` (1 repetition, tiny message and connection counts, possibly debug binaries "
          "and a busy machine) only to check the harness end to end. Run the full benchmark "
          "(`load-tests/bench.sh`, see `load-tests/README.md`) on a quiet machine for real "
          "figures.")
        w("")
    if res.get("interrupted"):
        w("> **This run was interrupted**; only the scenarios measured before that are shown.")
        w("")
    w("## How these were measured")
    w("")
    w(f"- **Command:** `{res['command']}`")
    git = res["git"]
    dirty = f" (plus {git['dirty_files']} modified tracked files)" if git["dirty_files"] else ""
    w(f"- **Commit:** `{git['commit']}`{dirty}")
    w(f"- **Date:** {res['started_utc']} to {res['finished_utc']} (UTC)")
    w(f"- **Machine:** {m['cpu_model']}, {m['cores']} cores, {m['ram_gib']} GiB RAM; kernel "
      f"{m['kernel']}; {m['os']} (Debian {m['debian_version']}); open-files hard limit "
      f"{m['open_files_hard_limit']}")
    w(f"- **Load average** (1/5/15 min) at start: {res['loadavg_start']}; at end: "
      f"{res['loadavg_end']}")
    v = res["versions"]
    w(f"- **Brokers:** {v[GATEHOUSE]} (`{res['profile']}` build), {v[MOSQUITTO]}; "
      f"{v['rustc']}; {v['openssl']}")
    w(f"- **Repetitions:** {res['repetitions']} per broker, alternating Gatehouse, mosquitto, "
      "Gatehouse, mosquitto, … within each scenario; each measurement starts a fresh broker.")
    w("- **Generator:** `gatehouse-bench` (this repository's emqtt-bench-compatible load "
      "generator) for both brokers, MQTT 5, over loopback (127.0.0.1), on the same machine as "
      "the broker. Its own CPU time is shown for every scenario so it can be seen not to be "
      "the bottleneck; on a 2-core machine it does share the cores with the broker.")
    w(f"- **Raw results:** [`{json_path.name}`]({rel_json}) (every run, every generator "
      "summary, the broker configurations).")
    w("- **Tables:** min / median / max over the repetitions. The ratio is Gatehouse's median "
      "divided by mosquitto's. *Better* says which direction wins: for *higher*, a ratio "
      "above 1 favours Gatehouse; for *lower*, a ratio below 1 does.")
    w("")
    w("How each figure is computed:")
    w("")
    w("- *delivered msgs/s*: messages counted by the subscribers ÷ (the subscribers' last "
      "receipt − the publishers' first send). Both instants are taken by the generator "
      "(`windows_unix` in its `--json`), on the same clock; connection setup is outside.")
    w("- *messages not delivered*: published × subscribers per message − delivered. A QoS 1 "
      "run with any loss (or any failed PUBACK) fails instead of giving a figure.")
    w("- *latency*: per message, the subscriber's receive time − the send time the publisher "
      "wrote into the payload (`ts` header, nanoseconds), from the subscriber's histogram.")
    w("- *TLS connections/s*: connections ÷ (last CONNACK − the generator's start).")
    w("- *CONNECT→CONNACK*: per connection, from the generator having written CONNECT to it "
      "having decoded a successful CONNACK (the TCP and TLS handshakes are before it), from "
      "its `connect_latency_ms` histogram. Measured in a second, light phase of the same "
      "run (a few connections at 100/s once the broker has settled after the rate phase), so "
      "it shows the path (in the authsvc scenarios: the gRPC round trip to authsvc) rather "
      "than a queue. The same figure under the offered 5000/s is in the raw results.")
    w("- *re-authentications/s*: `reauth_succ` (AUTH 0x00 answers to AUTH 0x19) counted "
      "between two of the generator's once-a-second report lines ÷ the time between them as "
      "the harness read them, all connections up; broker CPU over the same interval.")
    w("- *expiry → close*: per connection, the generator's clock when it read the broker's "
      "close of the socket − (when it wrote CONNECT + the credential's lifetime), from its "
      "`expiry_delay_ms` (`--expect-lifetime`): an upper bound of the real delay, since the "
      "lifetime starts at the decision, after CONNECT.")
    w("- *RSS per idle connection*: (broker VmRSS with every connection open, after a settle "
      "time − VmRSS before) ÷ connections, from `/proc/PID/status`.")
    w("- *CPU*: utime + stime from `/proc/PID/stat` (broker) and the generator's own getrusage "
      "/ `/proc`, over the same wall-clock interval (publisher start to subscriber exit; "
      "generator start to all connected), as % of one core. 200% is the whole machine.")
    w("")
    w("Broker settings, as generated (ports are chosen per run):")
    w("")
    w("- Gatehouse: persistence `Disabled`, `maxQueuedMessages: 10000000`, log level `warn`, "
      "the default worker count (one per core). TLS: a `Manual` port with the harness's "
      "certificate.")
    w("- mosquitto: `persistence false`, `max_queued_messages 0` (no limit, so no message is "
      "dropped for queue room), `max_inflight_messages 1024`, `set_tcp_nodelay true`, errors "
      "and warnings logged only. TLS: a `certfile`/`keyfile` listener with the same "
      "certificate. mosquitto is single-threaded.")
    w("- The authsvc scenarios add a `BrokerAuthentication` policy `bench-auth` that both "
      "Gatehouse ports reference (`Anonymous`; `JWT` for the re-authentication storm; "
      "`Anonymous` with `expirySeconds` for expiry). The authentication service runs "
      "embedded (in the broker process, over loopback gRPC) unless the scenario says *split*: "
      "then `authsvc` is a second process and the broker's CPU is the sum of both. mosquitto "
      "gets `per_listener_settings true` and a `password_file` (one user, made with "
      "`mosquitto_passwd -b`) on its TLS listener, where that scenario has a mosquitto column. "
      "The exact documents are in the raw results (`configs`).")
    w("")

    w("Related, hand-maintained pages: [idle-memory.md](idle-memory.md) (how the per-connection "
      "memory was profiled and reduced, with before/after figures), "
      "[qos1-throughput.md](qos1-throughput.md) (how QoS 1 throughput was profiled and fixed, "
      "with before/after figures) and "
      "[benchmarks-micro.md](benchmarks-micro.md) (single-function benchmarks, e.g. the "
      "authorization check).")
    w("")

    # Overview
    w("## Overview")
    w("")
    w("| scenario | headline | Gatehouse (median) | mosquitto (median) | Gatehouse ÷ mosquitto | "
      "better | target (issue 6) |")
    w("|---|---|---|---|---|---|---|")
    for sc in res["scenarios"]:
        status = sc.get("status")
        if status == "todo":
            w(f"| {sc['title']} | TODO | {sc['reason']} | {sc['reason']} | – | – | – |")
            continue
        if status == "not run":
            w(f"| {sc['title']} | not run | – | – | – | – | {sc['reason']} |")
            continue
        only = sc.get("no_mosquitto")
        for met in sc["metrics"]:
            if not met["headline"]:
                continue
            g = (sc["summary"][GATEHOUSE].get(met["key"]) or {}).get("median")
            mo = (sc["summary"][MOSQUITTO].get(met["key"]) or {}).get("median")
            ratio = f"{g / mo:.2f}" if g is not None and mo else "–"
            mo_cell = fmt(mo, met["unit"])
            if only:
                mo_cell, ratio = "n/a", only
            target = target_text(sc["id"], met["key"], g, mo, res["quick"])
            flag = " **(FAILED runs)**" if status == "failed" else ""
            w(f"| {sc['title']}{flag} | {met['label']} ({met['unit']}) | {fmt(g, met['unit'])} "
              f"| {mo_cell} | {ratio} | {met['better']} | {target} |")
    w("")

    for sc in res["scenarios"]:
        w(f"## {sc['title']}")
        w("")
        w(sc["desc"])
        w("")
        status = sc.get("status")
        if status == "todo":
            w(f"**TODO — {sc['reason']}.** Not measured yet.")
            w("")
            continue
        if status == "not run":
            w(f"**Not run:** {sc['reason']}.")
            w("")
            continue
        only = sc.get("no_mosquitto")
        if only:
            w(f"**Gatehouse only** ({only}). {sc.get('no_mosquitto_detail', '')}".rstrip())
            w("")
        w("| metric | better | Gatehouse min / median / max | mosquitto min / median / max | "
          "Gatehouse ÷ mosquitto |")
        w("|---|---|---|---|---|")
        for met in sc["metrics"]:
            cells = []
            meds = []
            for b in BROKERS:
                s = sc["summary"][b].get(met["key"])
                if only and b == MOSQUITTO:
                    cells.append("n/a")
                    meds.append(None)
                elif s is None:
                    cells.append("–")
                    meds.append(None)
                else:
                    u = met["unit"]
                    cells.append(f"{fmt(s['min'], u)} / **{fmt(s['median'], u)}** / "
                                 f"{fmt(s['max'], u)}")
                    meds.append(s["median"])
            ratio = (f"{meds[0] / meds[1]:.2f}" if meds[0] is not None and meds[1]
                     else "–")
            if met["better"] == "info":
                ratio = ratio + " (for information)" if ratio != "–" else ratio
            if only:
                ratio = "n/a"
            w(f"| {met['label']} ({met['unit']}) | {met['better']} | {cells[0]} | {cells[1]} "
              f"| {ratio} |")
        w("")
        errs = [(b, r) for b in BROKERS for r in sc["runs"].get(b, []) if r["error"]]
        if errs:
            w("**Failed runs** (excluded from the figures above):")
            w("")
            for b, r in errs:
                first = r["error"].strip().splitlines()[0][:300]
                w(f"- {LABEL[b]}, repetition {r['rep']}: {first}")
            w("")
        w(f"Generator command lines (first run): {commands(sc)}")
        w("")
    return "\n".join(out) + "\n"


def target_text(sid: str, key: str, g, mo, quick: bool) -> str:
    t = TARGETS.get(sid)
    if not t or t[0] != key:
        return "–"
    _, kind, bound, text = t
    if g is None or (kind.startswith("ratio") and not mo):
        return f"{text}: no figure"
    if quick:
        return f"{text} (not judged on a quick run)"
    if kind == "ratio>=":
        ok = g / mo >= bound
    elif kind == "ratio<=":
        ok = g / mo <= bound
    else:
        ok = g < bound
    return f"{text}: {'met' if ok else '**not met**'}"


def commands(sc: dict) -> str:
    for b in BROKERS:
        for r in sc.get("runs", {}).get(b, []):
            gens = r.get("generator")
            if gens:
                return "; ".join(
                    "`gatehouse-bench " + " ".join(quote(a) for a in display_args(g["args"])) + "`"
                    for g in gens.values()
                )
    return "–"


def display_args(args: list[str]) -> list[str]:
    """A generator's arguments without the per-run parts: the port and the --json path."""
    shown: list[str] = []
    it = iter(args)
    for a in it:
        if a == "--json":
            next(it, None)
        elif a == "--auth-data-file":
            next(it, None)
            shown += [a, "TOKENS_FILE"]
        elif a == "-p":
            next(it, None)
            shown += ["-p", "PORT"]
        else:
            shown.append(a)
    return shown


def quote(a: str) -> str:
    return f"'{a}'" if re.search(r"[\s$#*]", a) else a


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        stop_all_children()
