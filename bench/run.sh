#!/usr/bin/env bash
# Runs the side-by-side WebSocket bench with this checkout's daemon as the target
# "tornado_ws_runner", in one command, from anywhere:
#   bench/run.sh                                   # all peers, 1 round (~4 min)
#   bench/run.sh --rounds 3 --ref tornado_raw_uvloop --out /tmp/b.json   # docs/performance.md's run
#   bench/run.sh --rounds 3 --only tornado_raw_uvloop,tornado_ws_runner --ref tornado_raw_uvloop
# Extra arguments go to the bench's run.py (--rounds, --only, --modes, --out, --ref ...).
#
# The shared bench is read-only: it is copied to $BENCH_DIR (default /tmp/bench, kept
# between runs so setup is done once) and its setup.sh runs there (idempotent).
# Environment: BENCH_SRC (default /work/shared/bench), BENCH_DIR (default /tmp/bench),
#              VENV (default <repo>/.venv, must have tornado-ws-runner installed).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
src="${BENCH_SRC:-/work/shared/bench}"
dir="${BENCH_DIR:-/tmp/bench}"
venv="${VENV:-$repo/.venv}"
exe="$venv/bin/tornado-ws-runner"

[ -x "$exe" ] || { echo "bench/run.sh: $exe not found (pip install -e . into $venv)" >&2; exit 1; }
if [ ! -f "$dir/run.py" ]; then
  [ -f "$src/run.py" ] || { echo "bench/run.sh: no bench at $src (set BENCH_SRC)" >&2; exit 1; }
  mkdir -p "$dir"
  # the bench's own folder, without any venv or node_modules it may hold
  (cd "$src" && tar --exclude=./.venv --exclude=node_modules -cf - .) | (cd "$dir" && tar -xf -)
fi
"$dir/setup.sh" >&2

# The daemon's configs must be valid before the bench starts them.
"$exe" --conf "$repo/bench/runner.yaml" --check >&2
"$exe" --conf "$repo/bench/variants/access-on.yaml" --check >&2

# Two targets: the daemon with access lines off (bench/runner.yaml), and with logging as
# shipped (info, an access line per event: bench/variants/access-on.yaml).
# --out and other relative paths: run.sh/run.py take them from the caller's directory.
exec "$dir/run.sh" \
  --target "tornado_ws_runner=$exe --conf $repo/bench/runner.yaml --port {port}" \
  --target "twr_access_on=$exe --conf $repo/bench/variants/access-on.yaml --port {port}" \
  "$@"
