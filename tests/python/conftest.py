"""pytest fixtures for the paho-mqtt end-to-end tests: a real `gatehouse` process per test.

The broker is started the same way as the Rust tests start it (tests/src/broker.rs): config and
data dir in a temporary directory, port 0 on 127.0.0.1, readiness from the --ready-file, stderr
captured to a file that is printed when a test fails. This file holds no tests and no client
helpers; those are in test_paho.py.
"""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 20.0

LISTENER = """\
apiVersion: gatehouse.io/v1
kind: BrokerListener
metadata: {name: default}
spec:
  ports:
    - {port: 0, host: 127.0.0.1}
"""


def gatehouse_bin() -> Path:
    """$GATEHOUSE_BIN, else $CARGO_TARGET_DIR/debug, else the workspace's target/debug."""
    if os.environ.get("GATEHOUSE_BIN"):
        return Path(os.environ["GATEHOUSE_BIN"])
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    binary = target / "debug" / "gatehouse"
    if not binary.is_file():
        pytest.fail(f"{binary} not found: run `cargo build -p frontend --bin gatehouse` first")
    return binary


class Broker:
    def __init__(self, tmp: Path, config: str):
        self.tmp = tmp
        (tmp / "config.yaml").write_text(config)
        self.log_path = tmp / "broker.log"
        ready = tmp / "ready.jsonl"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    str(gatehouse_bin()),
                    "--config", str(tmp / "config.yaml"),
                    "--data-dir", str(tmp / "data"),
                    "--ready-file", str(ready),
                    "--log", "info",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while not ready.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"broker exited with {self.proc.returncode}:\n{self.logs()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"broker not ready within {READY_TIMEOUT}s:\n{self.logs()}")
            time.sleep(0.02)
        first = json.loads(ready.read_text().splitlines()[0])
        host, port = first["local_addr"].rsplit(":", 1)
        self.host, self.port = host, int(port)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def broker_config(clients: str = "") -> str:
    """A Broker document with `spec.advanced.clients: {clients}` plus the loopback listener."""
    if not clients:
        return LISTENER
    return (
        "apiVersion: gatehouse.io/v1\nkind: Broker\nmetadata: {name: default}\n"
        f"spec:\n  advanced:\n    clients: {{{clients}}}\n---\n{LISTENER}"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    broker = getattr(item, "_gatehouse", None)
    if report.when == "call" and report.failed and broker is not None:
        report.sections.append(("gatehouse log", broker.logs()))


@pytest.fixture
def broker(request, tmp_path):
    """A broker with every limit at its default."""
    b = Broker(tmp_path, broker_config())
    request.node._gatehouse = b
    yield b
    b.stop()


@pytest.fixture
def broker_with(request, tmp_path):
    """A factory: broker_with("maxKeepAliveSeconds: 60") starts one with those client limits."""
    started = []

    def start(clients: str) -> Broker:
        tmp = tmp_path / f"broker{len(started)}"
        tmp.mkdir()
        b = Broker(tmp, broker_config(clients))
        started.append(b)
        request.node._gatehouse = b
        return b

    yield start
    for b in started:
        b.stop()


WS_LISTENERS = """\
apiVersion: gatehouse.io/v1
kind: BrokerListener
metadata: {name: default}
spec:
  ports:
    - {port: 0, host: 127.0.0.1, protocol: WebSockets}
    - {port: 0, host: 127.0.0.1}
"""


@pytest.fixture
def ws_broker(request, tmp_path):
    """A broker with a WebSocket port first (`.host`/`.port`, MQTT on path /mqtt) and a plain
    MQTT port second (`.tcp_port`), both on loopback and sharing one router."""
    b = Broker(tmp_path, WS_LISTENERS)
    request.node._gatehouse = b
    lines = [l for l in (tmp_path / "ready.jsonl").read_text().splitlines() if l.strip()]
    assert len(lines) == 2, f"expected two ports in the ready file, got {lines}"
    b.tcp_port = int(json.loads(lines[1])["local_addr"].rsplit(":", 1)[1])
    yield b
    b.stop()
