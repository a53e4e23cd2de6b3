#!/usr/bin/env bash
# Servers side by side (issue 7): our smtpd (tokio, smol, blocking) against
# Postfix's smtp-sink, aiosmtpd, mailin-embedded and nodemailer's
# smtp-server, all discarding mail, on 127.0.0.1; and our smtpd storing
# into a Maildir or relaying to an smtp-sink. See bench/README.md for what
# each scenario measures and how.
#
#   bench/run.sh                 full run: RUNS=3 per cell, criterion benches too
#   bench/run.sh --quick         1 run, small counts, no criterion (to try it out)
#   bench/run.sh --criterion-only  only the core's criterion benches (alias --bench-only)
#
# Options: --runs N, --servers "tokio smtp-sink ...", --scenarios "a b c ...",
# --no-build, --no-install, --no-criterion, --label TEXT (goes into the report).
# Servers also: tokio-maildir tokio-relay nodemailer; scenario also: i.
# Environment: SMTPD_TOKIO, SMTPD_SMOL, SMTPD_BLOCKING (binary paths),
# BENCH_TARGET_DIR (default target/bench in the repository), LOADGEN (see gen_* below),
# and the per-scenario counts (A_MSGS ... G_SECS, I_CONNS, I_SIZE, I_WAIT,
# I_SETTLE, I_FINISH).
set -euo pipefail
# Read the whole script before running any of it (safe to edit during a run).
{

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
BENCH_TARGET_DIR=${BENCH_TARGET_DIR:-$ROOT/target/bench}
BIN_DIR=$BENCH_TARGET_DIR/bench-bin # copies: both examples are called `smtpd`
SMTPD_TOKIO=${SMTPD_TOKIO:-$BENCH_TARGET_DIR/release/smtpd}
SMTPD_SMOL=${SMTPD_SMOL:-$BIN_DIR/smtpd-smol}
SMTPD_BLOCKING=${SMTPD_BLOCKING:-$BIN_DIR/smtpd-blocking}
PEERS_TARGET=$HERE/peers/target
MAILIN_SINK=$PEERS_TARGET/release/mailin-sink
NODEMAILER_SINK=$HERE/peers/nodemailer-sink
CLIENT=$PEERS_TARGET/release/smtp-bench-client
VENV=$HERE/.venv
RESULTS=$HERE/results

RUNS=${RUNS:-3}
QUICK=0
BUILD=1
INSTALL=1
CRITERION=1
CRITERION_ONLY=0
LABEL=${LABEL:-}
ORIG_ARGS=${*:+$(printf "%q " "$@")}
# Also: tokio-maildir, tokio-relay, nodemailer (see server_cmd).
SERVERS="tokio tokio-1 smol smol-1 blocking smtp-sink aiosmtpd mailin"
# Also: i (held bodies: 3 GiB of message bodies at once; only when asked).
SCENARIOS="a b c d e f g h"
# The load generator for the smtp-source scenarios (b-e): `smtp-source`
# (Postfix), `bench-client` (bench/peers/smtp-bench-client, as a cross-check),
# or `loadgen` (smtp-tokio/examples/loadgen.rs: see gen_loadgen).
LOADGEN=${LOADGEN:-smtp-source}
LOADGEN_BIN=${LOADGEN_BIN:-$BENCH_TARGET_DIR/release/examples/loadgen}

while [ $# -gt 0 ]; do
  case $1 in
    --quick) QUICK=1 RUNS=1 CRITERION=0 ;;
    --runs) RUNS=$2; shift ;;
    --servers) SERVERS=$2; shift ;;
    --scenarios) SCENARIOS=$2; shift ;;
    --no-build) BUILD=0 ;;
    --no-install) INSTALL=0 ;;
    --no-criterion) CRITERION=0 ;;
    --criterion) CRITERION=1 ;;
    --criterion-only | --bench-only) CRITERION=1 CRITERION_ONLY=1 ;;
    --label) LABEL=$2; shift ;;
    -h | --help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

# Per-scenario sizes; --quick divides the counts so a run takes seconds.
if [ "$QUICK" = 1 ]; then
  : "${A_MSGS:=2000}" "${B_MSGS:=1000}" "${C_MSGS:=500}" "${D_MSGS:=200}" "${E_MSGS:=1}" "${F_CONNS:=500}" "${G_SECS:=2}"
  : "${I_CONNS:=10}" "${I_SIZE:=4194304}"
else
  : "${A_MSGS:=100000}" "${B_MSGS:=50000}" "${C_MSGS:=20000}" "${D_MSGS:=5000}" "${E_MSGS:=100}" "${F_CONNS:=10000}" "${G_SECS:=5}"
  : "${I_CONNS:=100}" "${I_SIZE:=31457280}"
fi
# (i): seconds to wait for every body to be written before reading the RSS
# anyway (a server that stops reading blocks the client's writes), seconds
# to let the server take in what is in flight before the reading, and
# seconds for the sessions to finish after the release.
I_WAIT=${I_WAIT:-120}
I_SETTLE=${I_SETTLE:-2}
I_FINISH=${I_FINISH:-300}
# (h): one pacing rate for every server (below the peaks of all but aiosmtpd).
H_RATE=${H_RATE:-15000}
GEN_TIMEOUT=${GEN_TIMEOUT:-300} # seconds, for one load-generator run
SERVER_TIMEOUT=${SERVER_TIMEOUT:-900} # a server that outlives its run dies anyway

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$RESULTS"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/smtp-bench.XXXXXX")
RAW=$WORK/raw.tsv # server scenario run key=value...
MAILDIR=$WORK/maildir # tokio-maildir's store, emptied after every run
: >"$RAW"
REPORT=$RESULTS/$STAMP.md
CLK_TCK=$(getconf CLK_TCK)
NEXT_PORT=${BASE_PORT:-25300}

note() { printf '\n=== %s\n' "$*" >&2; }
loud() { printf '\n!!! %s\n' "$*" >&2; echo "$*" >>"$WORK/notes"; }

# ---- cleanup: every server this script started dies with it ------------
STARTED=() # pids: the `timeout` wrappers and the servers under them
cleanup() {
  local pid all=()
  for pid in "${STARTED[@]}"; do # and their children (timeout's, time's subshell's)
    all+=("$pid" $(cat /proc/"$pid"/task/*/children 2>/dev/null || true))
  done
  STARTED=("${all[@]}")
  for pid in "${STARTED[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  sleep 0.3
  for pid in "${STARTED[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
forget() { # pids that have exited and been waited for: never signal them again
  local keep=() pid gone
  for pid in "${STARTED[@]}"; do
    for gone in "$@"; do [ "$pid" = "$gone" ] && continue 2; done
    keep+=("$pid")
  done
  STARTED=("${keep[@]}")
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- installation -----------------------------------------------------------
apt_install() { # packages...; never leaves a Postfix daemon running
  local made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    # Tell invoke-rc.d not to start services that the packages install.
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  echo "postfix postfix/mailname string bench.test" | debconf-set-selections
  timeout 600 apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq --no-install-recommends "$@" >&2 || {
    [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
    return 1
  }
  [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  if [ -x /usr/sbin/postfix ] && /usr/sbin/postfix status >/dev/null 2>&1; then
    loud "the postfix daemon was running after install: stopping it"
    /usr/sbin/postfix stop >&2 || true
  fi
}

install_tools() {
  local need=()
  command -v smtp-sink >/dev/null && command -v smtp-source >/dev/null || need+=(postfix)
  command -v iperf3 >/dev/null || need+=(iperf3)
  if [ ${#need[@]} -gt 0 ]; then
    note "installing ${need[*]} (Debian)"
    apt_install "${need[@]}"
  fi
  if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import aiosmtpd' 2>/dev/null; then
    note "installing aiosmtpd into $VENV"
    timeout 300 python3 -m venv "$VENV"
    timeout 600 "$VENV/bin/pip" install -q aiosmtpd
  fi
  case " $SERVERS " in *" nodemailer "*) ;; *) return 0 ;; esac
  if [ ! -d "$NODEMAILER_SINK/node_modules/smtp-server" ]; then
    if command -v npm >/dev/null; then
      note "installing smtp-server (npm) into $NODEMAILER_SINK/node_modules"
      (cd "$NODEMAILER_SINK" && { timeout 600 npm ci --no-audit --no-fund >&2 || timeout 600 npm install --no-audit --no-fund >&2; }) ||
        loud "npm could not install smtp-server for nodemailer"
    else
      loud "no npm: cannot install nodemailer's smtp-server"
    fi
  fi
}

build_all() {
  note "building the peers (bench/peers, target $PEERS_TARGET)"
  local p
  for p in mailin-sink smtp-bench-client; do
    (cd "$HERE/peers/$p" && CARGO_TARGET_DIR=$PEERS_TARGET timeout 1800 cargo build --release -q)
  done
  note "building our servers (target $BENCH_TARGET_DIR)"
  (cd "$ROOT" && CARGO_TARGET_DIR=$BENCH_TARGET_DIR timeout 1800 \
    cargo build --release -q -p smtp-tokio --features cli --bin smtpd --example loadgen)
  mkdir -p "$BIN_DIR"
  local crate name
  for name in smol blocking; do
    crate=smtp-async-std
    [ "$name" = blocking ] && crate=smtp-blocking
    if (cd "$ROOT" && CARGO_TARGET_DIR=$BENCH_TARGET_DIR timeout 1800 \
      cargo build --release -q -p "$crate" --features cli --example smtpd) >"$WORK/build-$name.log" 2>&1; then
      cp "$BENCH_TARGET_DIR/release/examples/smtpd" "$BIN_DIR/smtpd-$name"
    else
      rm -f "$BIN_DIR/smtpd-$name"
      loud "SKIPPING $name: \`cargo build --release -p $crate --features cli --example smtpd\` failed (being written?): $(grep -m1 -E '^error' "$WORK/build-$name.log" || tail -n1 "$WORK/build-$name.log")"
    fi
  done
}

# ---- servers ---------------------------------------------------------------
free_port() {
  while ss -Htan "( sport = :$NEXT_PORT )" | grep -q .; do NEXT_PORT=$((NEXT_PORT + 1)); done
  PORT=$NEXT_PORT
  NEXT_PORT=$((NEXT_PORT + 1))
}

have_server() {
  case $1 in
    tokio | tokio-1) [ -x "$SMTPD_TOKIO" ] ;;
    smol | smol-1) [ -x "$SMTPD_SMOL" ] ;;
    blocking) [ -x "$SMTPD_BLOCKING" ] ;;
    smtp-sink) command -v smtp-sink >/dev/null ;;
    aiosmtpd) [ -x "$VENV/bin/python" ] ;;
    mailin) [ -x "$MAILIN_SINK" ] ;;
    tokio-maildir) [ -x "$SMTPD_TOKIO" ] ;;
    tokio-relay) [ -x "$SMTPD_TOKIO" ] && command -v smtp-sink >/dev/null ;;
    nodemailer) command -v node >/dev/null && [ -d "$NODEMAILER_SINK/node_modules/smtp-server" ] ;;
    *) return 1 ;;
  esac
}

# server_cmd NAME PORT MAXCONN [SCENARIO]: the command line that runs NAME.
server_cmd() {
  local addr=127.0.0.1:$2 max=$3 sc=${4:-}
  local common=(--listen "$addr" --hostname bench.test --log warn
    --max-connections "$max" --max-connections-per-ip "$max")
  # (i): sessions sit inside DATA while the others write their bodies; and
  # room for its 30 MiB bodies whatever the defaults.
  local smtp_sink_t=() aiosmtpd_s=()
  if [ "$sc" = i ]; then
    common+=(--data-timeout 600 --max-size 67108864)
    smtp_sink_t=(-t 600)
    aiosmtpd_s=(-s 67108864)
  fi
  local ours=(--sink "${common[@]}")
  case $1 in
    tokio) echo "$SMTPD_TOKIO" "${ours[@]}" ;;
    smol) echo "$SMTPD_SMOL" "${ours[@]}" ;;
    # The same binaries on one thread (`--threads 1`; default: one per CPU).
    tokio-1) echo "$SMTPD_TOKIO" "${ours[@]}" --threads 1 ;;
    smol-1) echo "$SMTPD_SMOL" "${ours[@]}" --threads 1 ;;
    blocking) echo "$SMTPD_BLOCKING" "${ours[@]}" ;;
    # -u: smtp-sink refuses to run as root without dropping privileges.
    # -m: its connection limit (default 256). It offers PIPELINING.
    smtp-sink) echo smtp-sink $([ "$(id -u)" = 0 ] && echo -u nobody) -h bench.test -m "$max" "${smtp_sink_t[@]}" "$addr" 1024 ;;
    aiosmtpd) echo "$VENV/bin/python" -m aiosmtpd -n -c aiosmtpd.handlers.Sink "${aiosmtpd_s[@]}" -l "$addr" ;;
    # tokio-relay's upstream: -c counts sessions and messages on stdout.
    upstream-sink) echo smtp-sink $([ "$(id -u)" = 0 ] && echo -u nobody) -c -h upstream.test -m "$max" "${smtp_sink_t[@]}" "$addr" 1024 ;;
    # mailin-embedded serves one session per pool thread.
    mailin) echo "$MAILIN_SINK" "$addr" "$max" ;;
    # Durable: a Maildir per recipient under $MAILDIR (fsync'd; emptied
    # after each run). Every generator sends to rcpt0@bench.test.
    tokio-maildir) echo "$SMTPD_TOKIO" "${common[@]}" --domain bench.test --maildir "$MAILDIR" ;;
    # Relays everything to an smtp-sink on $UPPORT (start_server starts it):
    # bench.test is served but has no local store, so its recipients are
    # relayed (and the client is on loopback anyway). smtp-sink offers no
    # TLS; --relay-no-starttls says so.
    tokio-relay) echo "$SMTPD_TOKIO" "${common[@]}" --domain bench.test --relay "127.0.0.1:$UPPORT" --relay-no-starttls ;;
    # nodemailer's smtp-server (peers/nodemailer-sink): reads each message
    # stream to its end and drops it; SIZE 64 MiB; no AUTH/STARTTLS.
    nodemailer) echo node "$NODEMAILER_SINK/server.js" "$addr" "$max" ;;
  esac
}

# launch NAME PORT MAXCONN SCENARIO LOG: starts server NAME on PORT under
# timeout, waits until it listens; sets LPID (the server) and LTPID (timeout).
launch() {
  local cmd
  cmd=$(server_cmd "$1" "$2" "$3" "$4")
  # shellcheck disable=SC2086 # the command line is ours, words split on purpose
  timeout --kill-after=5 "$SERVER_TIMEOUT" $cmd >"$5" 2>&1 &
  local tpid=$! i
  STARTED+=("$tpid")
  LPID=
  for i in $(seq 100); do
    [ -z "$LPID" ] && LPID=$(cat "/proc/$tpid/task/$tpid/children" 2>/dev/null | awk '{print $1}')
    if [ -n "$LPID" ] && ss -Hltn "( sport = :$2 )" | grep -q .; then
      STARTED+=("$LPID")
      LTPID=$tpid
      return 0
    fi
    kill -0 "$tpid" 2>/dev/null || break
    sleep 0.1
  done
  loud "server $1 did not start on port $2: $(tail -n3 "$5")"
  kill -TERM "$tpid" 2>/dev/null || true
  wait "$tpid" 2>/dev/null || true
  forget "$tpid" ${LPID:+"$LPID"}
  return 1
}

# start_server NAME MAXCONN [SCENARIO]: sets PORT, SPID (the server itself)
# and TPID; for tokio-relay also UPPORT, UP_SPID, UP_TPID (its upstream).
start_server() {
  UP_SPID= UP_TPID= UPPORT=
  if [ "$1" = tokio-relay ]; then
    free_port
    UPPORT=$PORT
    launch upstream-sink "$UPPORT" "$2" "${3:-}" "$WORK/upstream.log" || return 1
    UP_SPID=$LPID UP_TPID=$LTPID
  fi
  if [ "$1" = tokio-maildir ]; then
    rm -rf "$MAILDIR"
    mkdir -p "$MAILDIR"
  fi
  free_port
  if ! launch "$1" "$PORT" "$2" "${3:-}" "$WORK/server.log"; then
    stop_pid "$UP_SPID" "$UP_TPID"
    return 1
  fi
  SPID=$LPID TPID=$LTPID
}

stop_pid() { # server, its timeout wrapper (either may be empty)
  [ -n "$1" ] || return 0
  kill -TERM "$1" 2>/dev/null || true
  local i
  for i in $(seq 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$1" ${2:+"$2"} 2>/dev/null || true
  [ -n "$2" ] && { wait "$2" 2>/dev/null || true; }
  forget "$1" ${2:+"$2"}
}

stop_server() {
  stop_pid "$SPID" "$TPID"
  stop_pid "$UP_SPID" "$UP_TPID"
  UP_SPID= UP_TPID=
  rm -rf "$MAILDIR" # tokio-maildir's messages: up to 3 GiB in (i)
}

# A check that the messages went somewhere: `stored=N`, the files in
# tokio-maildir's */new, or `relayed=N`, what tokio-relay's upstream counted.
stored_word() {
  if [ -d "$MAILDIR" ]; then
    echo "stored=$(find "$MAILDIR" -path '*/new/*' -type f | wc -l)"
  elif [ -n "$UP_SPID" ]; then
    sleep 0.2
    echo "relayed=$(tr '\r' '\n' <"$WORK/upstream.log" | grep -o 'mesg=[0-9]*' | tail -n1 | cut -d= -f2)"
  fi
}

cpu_ticks() { # utime+stime of a process, all threads (fields 14, 15 of stat)
  sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'
}
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

# ---- load generators ----------------------------------------------------------
# gen_NAME SCENARIO PORT [COUNT RATE] sets GEN_CMD (the command line) and
# GEN_MSGS (messages it sends). The command prints `key=value` words on stdout;
# `seconds=` (else the wall time counts), `mb_per_s=`, `p50_ms=`, `p99_ms=`
# are read when present.
gen_smtp_source() {
  local s=$1 p=127.0.0.1:$2
  # The envelope of smtp-bench-client (smtp-source's default is foo@`hostname`),
  # so that tokio-maildir and tokio-relay, serving bench.test, take it.
  local S=(smtp-source -f sender@bench.client -t rcpt0@bench.test)
  case $s in # -d: many messages per connection; without it, one each
    b) GEN_MSGS=$B_MSGS GEN_CMD=("${S[@]}" -d -s 16 -m "$B_MSGS" -l 1024 -r 1 "$p") ;;
    c) GEN_MSGS=$C_MSGS GEN_CMD=("${S[@]}" -s 16 -m "$C_MSGS" -l 1024 -r 1 "$p") ;;
    d) GEN_MSGS=$D_MSGS GEN_CMD=("${S[@]}" -d -s 4 -m "$D_MSGS" -l 102400 -r 1 "$p") ;;
    e) GEN_MSGS=$E_MSGS GEN_CMD=("${S[@]}" -d -s 1 -m "$E_MSGS" -l 10485760 -r 1 "$p") ;;
    *) return 1 ;;
  esac
}

gen_bench_client() {
  local s=$1 p=127.0.0.1:$2
  case $s in
    a) GEN_MSGS=$A_MSGS GEN_CMD=("$CLIENT" send -s 16 -m "$A_MSGS" -l 1024 -r 1 "$p") ;;
    b) GEN_MSGS=$B_MSGS GEN_CMD=("$CLIENT" send --lockstep -s 16 -m "$B_MSGS" -l 1024 -r 1 "$p") ;;
    c) GEN_MSGS=$C_MSGS GEN_CMD=("$CLIENT" send -k 1 -s 16 -m "$C_MSGS" -l 1024 -r 1 "$p") ;;
    d) GEN_MSGS=$D_MSGS GEN_CMD=("$CLIENT" send -s 4 -m "$D_MSGS" -l 102400 -r 1 "$p") ;;
    e) GEN_MSGS=$E_MSGS GEN_CMD=("$CLIENT" send -s 1 -m "$E_MSGS" -l 10485760 -r 1 "$p") ;;
    # (g): first the unpaced peak of the paced shape (--no-chain), then paced at half of it.
    gpeak) GEN_MSGS=$A_MSGS GEN_CMD=("$CLIENT" send --no-chain -s 16 -m "$A_MSGS" -l 1024 -r 1 "$p") ;;
    g | h) GEN_MSGS=$3 GEN_CMD=("$CLIENT" send -s 16 -m "$3" -l 1024 -r 1 --rate "$4" "$p") ;;
    *) return 1 ;;
  esac
}

# Our own generator, smtp-tokio/examples/loadgen.rs (on smtp_proto::client):
# it pipelines when offered, so it can also drive (a) (LOADGEN=loadgen).
gen_loadgen() {
  local s=$1 p=127.0.0.1:$2
  local L=("$LOADGEN_BIN" --target "$p")
  case $s in
    a) GEN_MSGS=$A_MSGS GEN_CMD=("${L[@]}" --concurrency 16 --messages "$A_MSGS" --size 1024) ;;
    b) GEN_MSGS=$B_MSGS GEN_CMD=("${L[@]}" --lock-step --concurrency 16 --messages "$B_MSGS" --size 1024) ;;
    c) GEN_MSGS=$C_MSGS GEN_CMD=("${L[@]}" --per-connection 1 --concurrency 16 --messages "$C_MSGS" --size 1024) ;;
    d) GEN_MSGS=$D_MSGS GEN_CMD=("${L[@]}" --concurrency 4 --messages "$D_MSGS" --size 102400) ;;
    e) GEN_MSGS=$E_MSGS GEN_CMD=("${L[@]}" --concurrency 1 --messages "$E_MSGS" --size 10485760) ;;
    *) return 1 ;;
  esac
}

# The generator for each scenario: (a) needs PIPELINING, (f) idle sessions and
# (g) pacing, which smtp-source cannot do, so they always use bench-client.
generator_for() {
  case $1 in
    a | f | g | gpeak | h) echo bench-client ;;
    *) echo "$LOADGEN" ;;
  esac
}

# run_gen NAME ARGS...: runs the command gen_NAME builds, under timeout and
# time; sets GEN_OUT (its key=value words), WALL and GEN_CPU (its user+sys s).
run_gen() {
  local fn=gen_${1//-/_}; shift
  GEN_CMD=() GEN_MSGS=
  "$fn" "$@" || { loud "$fn has no command for scenario $1"; return 1; }
  local TIMEFORMAT='%R %U %S' rc=0
  # In the background so that `wait` (unlike a foreground command) lets a
  # SIGINT/SIGTERM reach the trap at once; the subshell times the generator.
  { time timeout --kill-after=5 "$GEN_TIMEOUT" "${GEN_CMD[@]}" >"$WORK/gen.out" 2>"$WORK/gen.err"; } 2>"$WORK/time" &
  local gpid=$!
  STARTED+=("$gpid")
  wait "$gpid" || rc=$?
  forget "$gpid"
  read -r WALL u s <"$WORK/time"
  GEN_CPU=$(awk -v u="$u" -v s="$s" 'BEGIN {print u + s}')
  GEN_OUT=$(grep -o '[a-z_0-9]*=[^ ]*' "$WORK/gen.out" | tr '\n' ' ' || true)
  case " $GEN_OUT" in *" messages="*) ;; *) GEN_OUT="messages=$GEN_MSGS $GEN_OUT" ;; esac
  if [ "$rc" != 0 ]; then
    loud "generator failed (rc=$rc): ${GEN_CMD[*]}: $(head -c 300 "$WORK/gen.err")"
    return 1
  fi
}

# ---- one run of one cell ----------------------------------------------------
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$RAW"; }

run_load() { # server scenario run [count rate]
  local srv=$1 sc=$2 run=$3 gen
  gen=$(generator_for "$sc")
  start_server "$srv" 1024 || return 0
  local t0 t1
  t0=$(cpu_ticks "$SPID")
  if run_gen "$gen" "$sc" "$PORT" "${4:-}" "${5:-}"; then
    t1=$(cpu_ticks "$SPID")
    record "$srv" "$sc" "$run" "$GEN_OUT wall=$WALL srv_cpu=$(awk -v a="$t0" -v b="$t1" -v h="$CLK_TCK" 'BEGIN {print (b - a) / h}') gen_cpu=$GEN_CPU gen=$gen $(stored_word)"
  fi
  stop_server
}

wait_ready() { # client-pid seconds: prints the client's `ready` line once it has one
  local i line=
  for i in $(seq $(($2 * 10))); do
    line=$(grep -m1 '^ready' "$WORK/gen.out" || true)
    [ -n "$line" ] && break
    kill -0 "$1" 2>/dev/null || break
    sleep 0.1
  done
  echo "$line"
}

run_idle() { # server run
  local srv=$1 run=$2
  start_server "$srv" $((F_CONNS + 100)) || return 0
  local r0 r1 line= i
  sleep 0.5
  r0=$(rss_kib "$SPID")
  # The client prints `ready ...` once every session has had its EHLO reply,
  # then holds the connections until it is killed.
  timeout --kill-after=5 "$GEN_TIMEOUT" "$CLIENT" idle -n "$F_CONNS" --hold "$GEN_TIMEOUT" \
    "127.0.0.1:$PORT" >"$WORK/gen.out" 2>"$WORK/gen.err" &
  local cpid=$!
  STARTED+=("$cpid")
  line=$(wait_ready "$cpid" "$GEN_TIMEOUT")
  if [ -n "$line" ]; then
    sleep 1
    r1=$(rss_kib "$SPID")
    record "$srv" f "$run" "${line#ready } rss0_kib=$r0 rss1_kib=$r1 kib_per_session=$(awk -v a="$r0" -v b="$r1" -v l="$line" 'BEGIN {match(l, /connections=[0-9]+/); n = substr(l, RSTART + 12, RLENGTH - 12); printf "%.2f", (b - a) / (n > 0 ? n : 1)}') gen=bench-client"
  else
    loud "idle client for $srv gave no ready line: $(head -c 300 "$WORK/gen.err")"
  fi
  kill -TERM "$cpid" 2>/dev/null || true
  wait "$cpid" 2>/dev/null || true
  forget "$cpid"
  stop_server
}

# Bytes in the kernel between the client and the server, in KiB: the
# Recv-Q of the server's sockets on PORT (received, not yet read by the
# server) plus the Send-Q of the client's (written, not yet acknowledged).
in_flight_kib() {
  { ss -Htn state established "( sport = :$1 )" | awk '{print $1}'
    ss -Htn state established "( dport = :$1 )" | awk '{print $2}'; } |
    awk '{s += $1} END {printf "%.0f", s / 1024}'
}

run_held() { # server run: scenario (i), held bodies
  local srv=$1 run=$2
  if [ "$srv" = tokio-maildir ]; then # it stores every body: check the disk first
    local need_kib=$((I_CONNS * I_SIZE / 1024 * 12 / 10)) free_kib
    free_kib=$(df -Pk "$WORK" | awk 'NR == 2 {print $4}')
    if [ "$free_kib" -lt "$need_kib" ]; then
      loud "SKIPPING (i) for tokio-maildir: $((free_kib / 1024)) MiB free in $WORK, needs $((need_kib / 1024))"
      return 0
    fi
  fi
  start_server "$srv" $((I_CONNS + 16)) i || return 0
  local r0 r1 hwm t0 t1 line= done_line= inflight i
  sleep 0.5
  r0=$(rss_kib "$SPID")
  t0=$(cpu_ticks "$SPID")
  rm -f "$WORK/release"
  # The client prints `ready ...` once every session has written its body
  # (or after I_WAIT s), then waits for $WORK/release before the dots.
  timeout --kill-after=5 $((I_WAIT + I_FINISH + 300)) "$CLIENT" hold -n "$I_CONNS" -l "$I_SIZE" \
    --wait "$I_WAIT" --release "$WORK/release" --hold 300 --finish "$I_FINISH" \
    "127.0.0.1:$PORT" >"$WORK/gen.out" 2>"$WORK/gen.err" </dev/null &
  local cpid=$!
  STARTED+=("$cpid")
  line=$(wait_ready "$cpid" $((I_WAIT + 60)))
  if [ -n "$line" ]; then
    sleep "$I_SETTLE"
    r1=$(rss_kib "$SPID" 2>/dev/null || true)
    inflight=$(in_flight_kib "$PORT")
  fi
  touch "$WORK/release"
  wait "$cpid" 2>/dev/null || true
  forget "$cpid"
  done_line=$(grep -m1 '^accepted=' "$WORK/gen.out" || true)
  # A server that died (out of memory, say) has no figures.
  t1=$(cpu_ticks "$SPID" 2>/dev/null || true)
  hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$SPID/status" 2>/dev/null || true)
  if [ -n "$line" ] && { [ -z "$r1" ] || [ -z "$t1" ]; }; then
    loud "(i) $srv run $run: the server was gone before the end: $(tail -n3 "$WORK/server.log") ${done_line:-}"
  elif [ -n "$line" ] && [ -n "$done_line" ]; then
    record "$srv" i "$run" "${line#ready } $done_line rss0_kib=$r0 rss1_kib=$r1 hwm_kib=$hwm in_flight_kib=$inflight $(awk -v a="$r0" -v b="$r1" -v l="$line" 'BEGIN {
        match(l, /connections=[0-9]+/); n = substr(l, RSTART + 12, RLENGTH - 12)
        printf "mib_growth=%.1f mib_per_session=%.3f", (b - a) / 1024, (b - a) / 1024 / (n > 0 ? n : 1) }') srv_cpu=$(awk -v a="$t0" -v b="$t1" -v h="$CLK_TCK" 'BEGIN {print (b - a) / h}') gen=bench-client $(stored_word)"
    case " $done_line " in *" accepted=$I_CONNS "*) ;; *) loud "(i) $srv run $run: not every message accepted: $done_line $(head -c 300 "$WORK/gen.err")" ;; esac
  else
    loud "held-bodies client for $srv: ${line:-no ready line} ${done_line:-no result line}: $(head -c 300 "$WORK/gen.err")"
  fi
  stop_server
}

peak_of() { # server: median msgs/s of the (g) probes so far
  python3 "$HERE/summarize.py" --peak "$1" <"$RAW"
}

run_cells() {
  local srv sc run peak rate count
  for sc in $SCENARIOS; do
    for srv in $SERVERS; do
      have_server "$srv" || continue
      for run in $(seq "$RUNS"); do
        note "$srv / scenario $sc / run $run of $RUNS (load $(cut -d' ' -f1-3 /proc/loadavg))"
        case $sc in
          f) run_idle "$srv" "$run" ;;
          i) run_held "$srv" "$run" ;;
          g)
            # Half of the peak of the same transaction shape (pipelined when
            # offered, not chained behind the previous dot), probed first.
            run_load "$srv" gpeak "$run"
            peak=$(peak_of "$srv")
            [ -n "$peak" ] || { loud "no peak rate for $srv: skipping (g)"; continue; }
            rate=$(awk -v p="$peak" 'BEGIN {printf "%.0f", p / 2}')
            count=$(awk -v r="$rate" -v s="$G_SECS" 'BEGIN {printf "%.0f", r * s < 200 ? 200 : r * s}')
            run_load "$srv" g "$run" "$count" "$rate"
            ;;
          h)
            # The (g) transaction for every server at one rate, H_RATE.
            count=$(awk -v r="$H_RATE" -v s="$G_SECS" 'BEGIN {printf "%.0f", r * s}')
            run_load "$srv" h "$run" "$count" "$H_RATE"
            ;;
          *) run_load "$srv" "$sc" "$run" ;;
        esac
      done
    done
  done
}

run_iperf() {
  free_port
  timeout 60 iperf3 -s -1 -p "$PORT" >/dev/null 2>&1 &
  local ipid=$!
  STARTED+=("$ipid")
  sleep 0.5
  if timeout 60 iperf3 -c 127.0.0.1 -p "$PORT" -t 3 -J >"$WORK/iperf.json" 2>/dev/null; then
    record iperf3 ceiling 1 "mb_per_s=$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"] / 8e6, 1))' "$WORK/iperf.json")"
  else
    loud "iperf3 failed"
  fi
  kill -TERM "$ipid" 2>/dev/null || true
  wait "$ipid" 2>/dev/null || true
  forget "$ipid"
}

run_criterion() {
  local b
  for b in command data; do
    note "criterion: cargo bench -p smtp-proto --bench $b"
    (cd "$ROOT" && CARGO_TARGET_DIR=$BENCH_TARGET_DIR timeout 1800 \
      cargo bench -p smtp-proto --bench "$b" -- --warm-up-time 1 --measurement-time 3) \
      >"$WORK/criterion-$b.txt" 2>&1 || loud "cargo bench --bench $b failed: $(tail -n3 "$WORK/criterion-$b.txt")"
  done
}

# ---- main ---------------------------------------------------------------------
LOAD_START=$(cat /proc/loadavg)
if [ "$CRITERION_ONLY" = 0 ]; then
  [ "$INSTALL" = 1 ] && install_tools
  [ "$BUILD" = 1 ] && build_all
  [ -x "$CLIENT" ] || { echo "run.sh: $CLIENT missing (run without --no-build)" >&2; exit 1; }
  # (f) holds thousands of sockets in both the client and the server.
  ulimit -n $((F_CONNS * 2 + 1024)) 2>/dev/null || ulimit -n "$(ulimit -Hn)"
  for srv in $SERVERS; do have_server "$srv" || loud "SKIPPING $srv: not built or not installed"; done
  run_iperf
  run_cells
fi
[ "$CRITERION" = 1 ] && run_criterion
LOAD_END=$(cat /proc/loadavg)

{
  echo "# Servers side by side ($STAMP)"
  echo
  echo "Command: \`bench/run.sh ${ORIG_ARGS% }\` — runs per cell: $RUNS; commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet HEAD -- . ':!bench' 2>/dev/null || echo ' plus uncommitted changes outside bench/ (built as they were)')"
  echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo); /proc/loadavg at start: $LOAD_START; at end: $LOAD_END"
  [ -n "$LABEL" ] && echo "Label: $LABEL"
  echo
  [ -s "$WORK/notes" ] && sed 's/^/- /' "$WORK/notes" && echo
  python3 "$HERE/summarize.py" --counts "A=$A_MSGS B=$B_MSGS C=$C_MSGS D=$D_MSGS E=$E_MSGS F=$F_CONNS G=${G_SECS}s" \
    --held "I_CONNS=$I_CONNS I_SIZE=$I_SIZE I_WAIT=${I_WAIT}s I_SETTLE=${I_SETTLE}s" \
    --criterion "$WORK/criterion-command.txt" --criterion "$WORK/criterion-data.txt" <"$RAW"
  echo
  echo "<details><summary>raw runs</summary>"
  echo
  echo '```'
  cat "$RAW"
  echo '```'
  echo "</details>"
} >"$REPORT"
cat "$REPORT"
echo >&2
echo "report: $REPORT" >&2
exit
}
