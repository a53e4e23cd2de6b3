#!/usr/bin/env bash
# Relayed delivery into a real mail store (issue 17): Postfix's smtp-source
# sends 1 KiB messages, one per connection, 16 connections at once,
#   direct:  `smtp-source -L` (LMTP) straight into Dovecot's LMTP, and
#   relayed: `smtp-source` (SMTP) into our smtpd, which relays each message
#            with `--relay-lmtp` into the same Dovecot,
# over Dovecot's Unix socket and over its loopback port, alternating, RUNS
# times each. Dovecot stores every message in a Maildir (its default
# fsync), so both paths end in the same store work.
#
#   bench/dovecot.sh [SMTPD]     default: the tokio smtpd built by bench/run.sh
#
# Environment: MSGS (default 4000 per run), RUNS (default 3), SESSIONS (16),
# FSYNC (Dovecot's mail_fsync: default `optimized`, Dovecot's own; `never`
# takes the disk out, so the relay's own cost shows).
# Needs dovecot-core, dovecot-lmtpd and postfix (smtp-source):
# `.ci/apt-install dovecot-core dovecot-lmtpd postfix`.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SMTPD=${1:-${BENCH_TARGET_DIR:-$HERE/../target/bench}/release/smtpd}
MSGS=${MSGS:-4000}
RUNS=${RUNS:-3}
FSYNC=${FSYNC:-optimized}
SESSIONS=${SESSIONS:-16}
export PATH="$PATH:/usr/sbin:/sbin"
for tool in dovecot smtp-source; do
  command -v $tool >/dev/null || { echo "dovecot.sh: needs $tool" >&2; exit 1; }
done
[ -x "$SMTPD" ] || { echo "dovecot.sh: no smtpd at $SMTPD (build it: see bench/README.md)" >&2; exit 1; }

WORK=$(mktemp -d)
chmod 755 "$WORK"
DOVECOT=
SMTPD_PID=
cleanup() {
  [ -n "$SMTPD_PID" ] && kill "$SMTPD_PID" 2>/dev/null && wait "$SMTPD_PID" 2>/dev/null
  [ -n "$DOVECOT" ] && kill "$DOVECOT" 2>/dev/null && wait "$DOVECOT" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Dovecot refuses to deliver as root: root's mail goes to nobody.
if [ "$(id -u)" = 0 ]; then UID_=65534; GID_=65534; else UID_=$(id -u); GID_=$(id -g); fi
mkdir "$WORK/mail"
chown "$UID_:$GID_" "$WORK/mail"
# One mailbox per measurement: a Maildir slows down as it fills, which
# would favour whichever path ran first.
for n in $(seq $((4 * RUNS))); do echo "user$n@example.test:::::::"; done >"$WORK/users"
CELL=0
LMTP_PORT=$(free_port)
cat >"$WORK/dovecot.conf" <<EOF
protocols = lmtp
base_dir = $WORK/run
state_dir = $WORK/state
log_path = $WORK/dovecot.log
ssl = no
listen = 127.0.0.1
default_internal_user = $(id -un)
default_login_user = $(id -un)
default_internal_group = $(id -gn)
mail_location = maildir:$WORK/mail/%n/Maildir
mail_fsync = $FSYNC
passdb {
  driver = passwd-file
  args = $WORK/users
}
userdb {
  driver = passwd-file
  args = $WORK/users
  default_fields = uid=$UID_ gid=$GID_ home=$WORK/mail/%n
}
service lmtp {
  process_min_avail = 4
  unix_listener $WORK/lmtp {
    mode = 0666
  }
  inet_listener lmtp {
    address = 127.0.0.1
    port = $LMTP_PORT
  }
}
EOF
dovecot -F -c "$WORK/dovecot.conf" >"$WORK/dovecot.out" 2>&1 &
DOVECOT=$!
for _ in $(seq 100); do
  [ -S "$WORK/lmtp" ] && (exec 3<>"/dev/tcp/127.0.0.1/$LMTP_PORT") 2>/dev/null && break
  sleep 0.1
done

# smtpd in front, relaying to $1 (unix:PATH or 127.0.0.1:PORT); sets SMTPD_ADDR.
start_smtpd() {
  SMTPD_ADDR=127.0.0.1:$(free_port)
  "$SMTPD" --listen "$SMTPD_ADDR" --domain example.test --relay "$1" --relay-lmtp \
    --log warn >"$WORK/smtpd.log" 2>&1 &
  SMTPD_PID=$!
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/${SMTPD_ADDR%:*}/${SMTPD_ADDR#*:}") 2>/dev/null && break
    sleep 0.1
  done
}

stop_smtpd() {
  # smtpd's own CPU time (user + system, clock ticks), per 1,000 messages.
  awk -v m="$MSGS" -v hz="$(getconf CLK_TCK)" \
    '{ printf "# smtpd CPU: %.0f ms per 1,000 messages\n", ($14 + $15) * 1000 / hz * 1000 / m }' \
    "/proc/$SMTPD_PID/stat"
  kill "$SMTPD_PID"
  wait "$SMTPD_PID" 2>/dev/null || true
  SMTPD_PID=
}

delivered() { { find "$WORK/mail/user$CELL/Maildir" -path '*/new/*' -type f 2>/dev/null || true; } | wc -l; }

# run LABEL SMTP-SOURCE-ARGS...: msgs/s of one run, checked against the store.
run() {
  local label=$1 before after start end
  shift
  CELL=$((CELL + 1))
  before=$(delivered)
  start=$(date +%s.%N)
  smtp-source -d -s "$SESSIONS" -l 1024 -m "$MSGS" -f sender@client.example \
    -t "user$CELL@example.test" "$@"
  end=$(date +%s.%N)
  after=$(delivered)
  if [ $((after - before)) -ne "$MSGS" ]; then
    echo "$label: $((after - before)) of $MSGS messages stored" >&2
    tail -5 "$WORK/dovecot.log" "$WORK/smtpd.log" >&2
    exit 1
  fi
  awk -v l="$label" -v m="$MSGS" -v s="$start" -v e="$end" 'BEGIN { printf "%s\t%.0f\n", l, m / (e - s) }'
}

echo "# $MSGS messages of 1 KiB per run, $SESSIONS sessions, one message per connection, mail_fsync=$FSYNC; msgs/s"
for r in $(seq "$RUNS"); do
  run "direct-unix (smtp-source -L)" -L "unix:$WORK/lmtp"
  start_smtpd "unix:$WORK/lmtp"
  run "relayed-unix (smtpd --relay unix: --relay-lmtp)" "$SMTPD_ADDR"
  stop_smtpd
  run "direct-tcp (smtp-source -L)" -L "127.0.0.1:$LMTP_PORT"
  start_smtpd "127.0.0.1:$LMTP_PORT"
  run "relayed-tcp (smtpd --relay 127.0.0.1:PORT --relay-lmtp)" "$SMTPD_ADDR"
  stop_smtpd
  echo "# run $r done"
done
