#!/usr/bin/env bash
# The side-by-side benchmark, Gatehouse against Debian's mosquitto 2.0 (issue 6).
#
#   load-tests/bench.sh            # full run: release build, 5 repetitions; writes
#                                  # docs/benchmarks.md and load-tests/results/<timestamp>.json
#   load-tests/bench.sh --quick    # 1 repetition, tiny counts: validates the harness only
#
# Every option is passed to load-tests/harness/harness.py (see --help there). Run it on a quiet
# machine: the figures are only as good as the machine's idleness.
set -euo pipefail
cd "$(dirname "$0")/.."
export GATEHOUSE_BENCH_COMMAND="load-tests/bench.sh${*:+ $*}"
exec python3 load-tests/harness/harness.py "$@"
