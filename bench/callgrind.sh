#!/usr/bin/env bash
# User-space instructions per message in our smtpd, counted by
# `valgrind --tool=callgrind`: repeatable to a few instructions whatever else
# the machine is doing, so small changes show that wall-clock runs would drown.
#
#   bench/callgrind.sh [BINARY]      default: the tokio smtpd built by bench/run.sh
#
# Runs `BINARY --sink --threads 1` under callgrind twice: once for MESSAGES
# (default 5000) pipelined 1 KiB messages over 4 sessions, once for 4
# messages (start-up, connection set-up and shutdown); prints the difference
# divided by the extra messages. Set ARGS for other load (smtp-bench-client
# `send` flags, e.g. ARGS="--lockstep"). The per-function profile of the big
# run stays in $OUT (callgrind_annotate $OUT).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN=${1:-${BENCH_TARGET_DIR:-$HERE/../target/bench}/release/smtpd}
MESSAGES=${MESSAGES:-5000}
ARGS=${ARGS:-}
CLIENT=$HERE/peers/target/release/smtp-bench-client
OUT=${OUT:-/tmp/callgrind.smtpd.out}
command -v valgrind >/dev/null || { echo "callgrind.sh: needs valgrind (apt-get install valgrind)" >&2; exit 1; }
[ -x "$CLIENT" ] || (cd "$HERE/peers/smtp-bench-client" && CARGO_TARGET_DIR=$HERE/peers/target cargo build --release -q)
WORK=$(mktemp -d)
PID=
trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$WORK"' EXIT

# run N OUTFILE: the instruction total of a server that took N messages.
run() {
  local log=$WORK/log addr
  # A port the OS picks (as bench/run.sh: logging at warn, so no
  # "listening" line to read it from).
  addr=127.0.0.1:$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  timeout 600 valgrind --tool=callgrind --callgrind-out-file="$2" \
    "$BIN" --sink --listen "$addr" --threads 1 --log warn >"$log" 2>&1 &
  PID=$!
  for _ in $(seq 300); do
    (exec 3<>"/dev/tcp/${addr%:*}/${addr#*:}") 2>/dev/null && break
    sleep 0.1
  done
  # shellcheck disable=SC2086 # ARGS are flags, split on purpose
  "$CLIENT" send -s 4 -m "$1" -l 1024 $ARGS "$addr" >/dev/null
  kill -TERM "$PID"
  wait "$PID" || true
  PID=
  awk '/^summary:/ {print $2}' "$2"
}

big=$(run "$MESSAGES" "$OUT")
small=$(run 4 "$WORK/small.out")
echo "$BIN: $(((big - small) / (MESSAGES - 4))) instructions per message (user space; $MESSAGES messages, ARGS='$ARGS')"
