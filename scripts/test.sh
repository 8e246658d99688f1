#!/usr/bin/env bash
# The whole Gatehouse test suite, runnable on a fresh Debian machine:
#
#   1. installs what it needs if missing (mosquitto, mosquitto-clients, openssl, python3-venv; a .venv
#      with tests/python/requirements.txt),
#   2. lint: cargo fmt --check, cargo clippy -D warnings,
#   3. builds the binaries the end-to-end tests start (gatehouse, authsvc),
#   4. cargo nextest run --workspace (cargo test if nextest is absent),
#   5. pytest on tests/python (paho-mqtt against the real broker),
#   6. a short fuzzing pass over every decoder (scripts/fuzz.sh; FUZZ_SECONDS per target).
#
# Every stage runs even if an earlier one failed, so one run shows every problem; the script
# exits non-zero if any stage failed. Run it from anywhere; as root, or with sudo available.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO="$(pwd)"

log() { printf '\n==> %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# --- 1. prerequisites ---------------------------------------------------------------------

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install the Rust toolchain (rustup) first" >&2
    exit 1
fi

packages=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || packages+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 && command -v mosquitto_sub >/dev/null 2>&1 \
    || packages+=(mosquitto-clients)
command -v python3 >/dev/null 2>&1 || packages+=(python3)
# tests/src/pki.rs makes RSA keys with it (ring cannot generate RSA keys).
command -v openssl >/dev/null 2>&1 || packages+=(openssl)
# `python3 -m venv` fails without ensurepip, which Debian ships separately.
python3 -m venv --help >/dev/null 2>&1 && python3 -c 'import ensurepip' >/dev/null 2>&1 \
    || packages+=(python3-venv)
if [ "${#packages[@]}" -gt 0 ]; then
    log "installing ${packages[*]}"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${packages[@]}"
fi

VENV="$REPO/.venv"
if ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    log "creating $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
fi
log "installing Python test requirements"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r tests/python/requirements.txt

# --- 2..5. the stages ---------------------------------------------------------------------

failed=()
stage() {
    local name="$1"
    shift
    log "$name: $*"
    if ! "$@"; then
        failed+=("$name")
        echo "!!! stage failed: $name" >&2
    fi
}

stage "format" cargo fmt --all --check
stage "clippy" cargo clippy --workspace --all-targets -- -D warnings

# The e2e tests run the real binaries; cargo only builds binaries of the package under test.
stage "build broker" cargo build -p frontend --bin gatehouse
stage "build authsvc" cargo build -p authsvc --bin authsvc

if cargo nextest --version >/dev/null 2>&1; then
    stage "rust tests" cargo nextest run --workspace --no-fail-fast
else
    echo "cargo-nextest not found; falling back to cargo test"
    stage "rust tests" cargo test --workspace --no-fail-fast
fi

# -p no:cacheprovider: keep the work tree free of .pytest_cache.
stage "python tests" "$VENV/bin/python" -m pytest -p no:cacheprovider tests/python

# Last, being the slowest; fuzz.sh installs cargo-fuzz itself if it is missing.
stage "fuzz" bash scripts/fuzz.sh "${FUZZ_SECONDS:-15}"

if [ "${#failed[@]}" -gt 0 ]; then
    log "FAILED stages: ${failed[*]}"
    exit 1
fi
log "all stages passed"
