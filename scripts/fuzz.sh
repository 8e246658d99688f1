#!/usr/bin/env bash
# Fuzz the mqtt crate: run every cargo-fuzz target in fuzz/ for SECONDS_PER_TARGET seconds
# (default 15) and fail if any of them finds a crash, printing the crash artifact.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]
#
# Needs only stable Rust: libFuzzer's -Z flags are unlocked with RUSTC_BOOTSTRAP=1. Installs
# cargo-fuzz (`cargo install cargo-fuzz --locked`) if it is missing. Seeds each target's
# corpus (fuzz/corpus/<target>, gitignored) with a few valid packets, then keeps whatever the
# fuzzer adds there for the next run. See fuzz/README.md.
set -euo pipefail

SECONDS_PER_TARGET="${1:-15}"
if ! [[ "$SECONDS_PER_TARGET" =~ ^[0-9]+$ ]] || [ "$SECONDS_PER_TARGET" -lt 1 ]; then
    echo "usage: $0 [SECONDS_PER_TARGET]" >&2
    exit 2
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FUZZ_DIR="$ROOT/fuzz"
TARGETS=(decode_v311 decode_v5 decode_incremental topic session)

export RUSTC_BOOTSTRAP=1
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

# ---------------------------------------------------------------- seed corpora
# seed TARGET NAME HEX...: write the bytes to fuzz/corpus/TARGET/seed-NAME.
seed() {
    local dir="$FUZZ_DIR/corpus/$1" name="$2"
    shift 2
    mkdir -p "$dir"
    local hex escaped=""
    for hex in $*; do
        escaped+="\\x$hex"
    done
    printf "$escaped" >"$dir/seed-$name"
}

# seed_text TARGET NAME TEXT: write TEXT (printf %b escapes allowed) to the corpus.
seed_text() {
    mkdir -p "$FUZZ_DIR/corpus/$1"
    printf '%b' "$3" >"$FUZZ_DIR/corpus/$1/seed-$2"
}

# MQTT 3.1.1 packets (the codec's golden bytes).
V3_CONNECT="10 25 00 04 4D 51 54 54 04 EE 00 3C 00 03 61 62 63 00 03 77 2F 74 00 03 62 79 65
            00 04 75 73 65 72 00 04 70 61 73 73" # will, user name, password
V3_CONNACK="20 02 01 00"
V3_PUBLISH0="30 07 00 03 61 2F 62 68 69"   # "a/b" "hi"
V3_PUBLISH1="3B 08 00 03 61 2F 62 00 0A 78" # DUP QoS 1 RETAIN, id 10
V3_PUBLISH2="34 05 00 01 74 FF FF"         # QoS 2, id 65535, empty payload
V3_ACKS="40 02 00 07 50 02 00 07 62 02 00 07 70 02 00 07"
V3_SUBSCRIBE="82 0E 00 01 00 03 61 2F 62 01 00 03 63 2F 23 02" # a/b QoS 1, c/# QoS 2
V3_SUBACK="90 05 00 01 00 01 80"
V3_UNSUBSCRIBE="A2 07 00 02 00 03 61 2F 2B" # a/+
V3_UNSUBACK="B0 02 00 02"
V3_PING_DISCONNECT="C0 00 D0 00 E0 00"

# MQTT 5.0 packets.
V5_CONNECT="10 30 00 04 4D 51 54 54 05 96 00 1E 0F 11 00 00 0E 10 21 00 14 26 00 01 6B 00 01 76
            00 02 69 64 07 01 01 18 00 00 00 05 00 01 74 00 02 68 69 00 01 75"
V5_CONNECT_AUTH="10 11 00 04 4D 51 54 54 05 02 00 0A 04 15 00 01 6D 00 00" # method "m"
V5_CONNACK="20 0C 00 00 09 24 01 22 00 0A 12 00 01 78"
V5_PUBLISH_PROPS="32 17 00 03 61 2F 62 00 01 0C 01 01 02 00 00 00 3C 0B 05 23 00 02 68 65 79"
V5_PUBLISH_ALIAS="32 0D 00 03 61 2F 62 00 01 03 23 00 02 68 69" # sets alias 2 = "a/b"
V5_PUBLISH_BY_ALIAS="30 07 00 00 03 23 00 02 78"                # empty topic, alias 2
V5_PUBLISH_SUBIDS="31 0C 00 00 08 0B 01 0B 80 01 23 00 07 78"   # server-side: 2 sub ids
V5_ACKS="40 03 00 07 10 50 08 00 07 80 04 1F 00 01 72 62 02 00 07 70 02 00 07"
V5_SUBSCRIBE="82 0D 00 02 02 0B 07 00 01 78 2D 00 01 79 00"
V5_SUBACK="90 06 00 04 00 00 01 80"
V5_UNSUBSCRIBE="A2 06 00 05 00 00 01 62"
V5_UNSUBACK="B0 05 00 05 00 00 11"
V5_AUTH="F0 0A 18 08 15 00 01 6D 16 00 01 64"
V5_DISCONNECT="E0 08 8B 06 1F 00 03 62 79 65"
V5_DISCONNECT_EXPIRY="E0 07 00 05 11 00 00 00 05"

seed decode_v311 connect "$V3_CONNECT"
seed decode_v311 connack "$V3_CONNACK"
seed decode_v311 publish "$V3_PUBLISH0 $V3_PUBLISH1 $V3_PUBLISH2"
seed decode_v311 acks "$V3_ACKS"
seed decode_v311 subscribe "$V3_SUBSCRIBE $V3_SUBACK"
seed decode_v311 unsubscribe "$V3_UNSUBSCRIBE $V3_UNSUBACK"
seed decode_v311 ping "$V3_PING_DISCONNECT"

seed decode_v5 connect "$V5_CONNECT"
seed decode_v5 connect-auth "$V5_CONNECT_AUTH $V5_AUTH"
seed decode_v5 connack "$V5_CONNACK"
seed decode_v5 publish "$V5_PUBLISH_PROPS $V5_PUBLISH_SUBIDS"
seed decode_v5 acks "$V5_ACKS"
seed decode_v5 subscribe "$V5_SUBSCRIBE $V5_SUBACK"
seed decode_v5 unsubscribe "$V5_UNSUBSCRIBE $V5_UNSUBACK"
seed decode_v5 disconnect "$V5_DISCONNECT $V5_DISCONNECT_EXPIRY"

# decode_incremental: selector byte (bit 7: v5; bits 0-1: chunk ceiling 1/3/16/512), stream.
seed decode_incremental v311-bytewise "00 $V3_CONNECT $V3_PUBLISH1 $V3_SUBSCRIBE C0 00"
seed decode_incremental v311-chunks "03 $V3_PUBLISH0 $V3_ACKS $V3_UNSUBSCRIBE 30"
seed decode_incremental v5-bytewise "80 $V5_CONNECT $V5_PUBLISH_PROPS $V5_AUTH"
seed decode_incremental v5-chunks "86 $V5_SUBSCRIBE $V5_ACKS $V5_DISCONNECT 32 80"

# topic: "filter\ntopic", and the alphabet form (a b $ / + # = bytes 0-5) split by 0xFF.
seed_text topic plus 'sport/+/player1\nsport/tennis/player1'
seed_text topic hash '#\n$SYS/monitor'
seed_text topic parent 'a/#\na'
seed_text topic shared '$share/g/a/#\na/b'
seed topic covers "04 03 05 FF 00 03 04 FF 00 03 01" # "+/#" covers "a/+", topic "a/b"

# session: selector byte (bit 0: valid CONNECT prefix, bit 1: v5, see the target), stream.
seed session v311 "01 $V3_SUBSCRIBE $V3_PUBLISH1 $V3_PUBLISH2 62 02 FF FF C0 00 $V3_UNSUBSCRIBE E0 00"
seed session v5 "0F $V5_SUBSCRIBE $V5_PUBLISH_ALIAS $V5_PUBLISH_BY_ALIAS C0 00 $V5_DISCONNECT_EXPIRY"
seed session v5-restored-echo "CF 40 02 00 07 50 02 00 08 70 02 00 09 $V5_PUBLISH_ALIAS 40 02 FF FE E0 00"
seed session v5-auth "0C $V5_CONNECT_AUTH $V5_AUTH $V5_UNSUBSCRIBE"
seed session v311-tight-refused "3D $V3_SUBSCRIBE $V3_PUBLISH1 $V3_PUBLISH0"

# ---------------------------------------------------------------- build, then run
cd "$FUZZ_DIR"
echo "== building fuzz targets"
build_start=$SECONDS
cargo fuzz build
echo "== built in $((SECONDS - build_start)) s"

failed=()
for target in "${TARGETS[@]}"; do
    echo "== fuzzing $target for $SECONDS_PER_TARGET s"
    log="$FUZZ_DIR/artifacts/logs/$target.log"
    mkdir -p "$FUZZ_DIR/artifacts/logs"
    run_start=$SECONDS
    # -timeout: one input running this long is a hang, reported like a crash.
    if cargo fuzz run "$target" -- \
        -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 -timeout=10 \
        >"$log" 2>&1; then
        echo "   ok in $((SECONDS - run_start)) s: $(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1)"
    else
        echo "!! $target FAILED after $((SECONDS - run_start)) s; log: $log"
        # The panic (message on the next line), or libFuzzer's verdict for OOM, timeout, ASan.
        grep -E -A1 "panicked at" "$log" | head -4 || true
        grep -E "ERROR: (libFuzzer|AddressSanitizer)|^SUMMARY" "$log" | head -3 || true
        artifact="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)"
        if [ -n "$artifact" ]; then
            case "$artifact" in
                /*) ;;
                *) artifact="$FUZZ_DIR/${artifact#./}" ;;
            esac
            echo "   crash artifact: $artifact"
            echo "   reproduce: (cd $FUZZ_DIR && RUSTC_BOOTSTRAP=1 cargo fuzz run $target $artifact)"
        else
            tail -20 "$log"
        fi
        failed+=("$target")
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "== fuzzing found crashes in: ${failed[*]}"
    exit 1
fi
echo "== all ${#TARGETS[@]} fuzz targets ran ${SECONDS_PER_TARGET} s without a crash"
