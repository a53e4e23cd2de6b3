#!/usr/bin/env python3
"""Turns bench/run.sh's raw runs (TSV on stdin: server, scenario, run,
key=value...) into the Markdown table of the report: medians per cell, the
ratio to Postfix's smtp-sink, CPU per 1,000 messages and who was CPU-bound.

Scenario (i), held bodies, gets a table of its own: the server's RSS growth
while every session holds a whole body but its final dot, in all and per
session, and how many messages were accepted after the dot.

`--peak SERVER` prints only that server's median msgs/s in the (g) probes
(`gpeak`: the unpaced peak of the transaction shape run.sh paces in (g) at
half of it)."""

import argparse
import re
import statistics
import sys

SCENARIOS = {
    "a": ("1 KiB, 1 rcpt, 16 sessions, pipelined", "msgs/s", "high", 1024),
    "b": ("1 KiB, 1 rcpt, 16 sessions, lock-step", "msgs/s", "high", 1024),
    "c": ("1 KiB, one transaction per connection, 16 at once", "msgs/s", "high", 1024),
    "d": ("100 KiB, 4 sessions", "MB/s", "high", 102400),
    "e": ("10 MiB message(s), 1 session", "MB/s", "high", 10485760),
    "f": ("idle sessions after EHLO", "KiB RSS/session", "low", 0),
    "g": ("latency at half of peak, 16 sessions", "p50 / p99 ms", "low", 1024),
    "h": ("latency at one rate for all, 16 sessions", "p50 / p99 ms", "low", 1024),
}
SERVERS = [
    "tokio", "tokio-1", "tokio-maildir", "tokio-relay", "smol", "smol-1", "blocking",
    "smtp-sink", "aiosmtpd", "mailin", "nodemailer",
]
BASE = "smtp-sink"


def rows(stream):
    for line in stream:
        parts = line.rstrip("\n").split("\t")
        if len(parts) < 4:
            continue
        kv = dict(p.split("=", 1) for p in parts[3].split() if "=" in p)
        yield parts[0], parts[1], parts[2], kv


def num(kv, key):
    try:
        return float(kv[key])
    except (KeyError, ValueError):
        return None


def derive(sc, kv):
    """Per-run figures: primary value(s), server CPU s per 1k msgs, CPU %s."""
    out = {}
    msgs = num(kv, "messages")
    secs = num(kv, "seconds") or num(kv, "wall")
    wall = num(kv, "wall") or secs
    size = SCENARIOS[sc][3]
    if sc in "abc" and msgs and secs:
        out["v"] = msgs / secs
    elif sc in "de" and msgs and secs:
        out["v"] = msgs * size / secs / 1e6
    elif sc == "f":
        out["v"] = num(kv, "kib_per_session")
    elif sc in ("g", "h"):
        out["v"] = num(kv, "p50_ms")
        out["v2"] = num(kv, "p99_ms")
        out["rate"] = msgs / secs if msgs and secs else None
    srv = num(kv, "srv_cpu")
    gen = num(kv, "gen_cpu")
    if srv is not None and msgs:
        out["cpu_per_k"] = srv / msgs * 1000
    if srv is not None and wall:
        out["srv_pct"] = srv / wall * 100
    if gen is not None and wall:
        out["gen_pct"] = gen / wall * 100
    return out


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=None):
    if v is None:
        return "–"
    if digits is None:
        digits = 0 if abs(v) >= 100 else 1 if abs(v) >= 10 else 2 if abs(v) >= 1 else 3
    return f"{v:,.{digits}f}"


def bound(srv_pct, gen_pct):
    if srv_pct is None or gen_pct is None:
        return "–"
    if srv_pct + gen_pct >= 170:
        return "both cores busy"
    if srv_pct >= 85 and srv_pct >= gen_pct:
        return "server"
    if gen_pct >= 85:
        return "generator"
    return "neither (waits)"


def held(data, sizes):
    """The (i) table: RSS growth with every body held before its dot."""
    runs = {}
    for srv, sc, _run, kv in data:
        if sc == "i":
            runs.setdefault(srv, []).append(kv)
    if not runs:
        return
    print()
    print("(i) held bodies: every session sends its whole body but not the final dot; "
          "the server's RSS is read then (growth from before the sessions opened).")
    print()
    print("| server | RSS growth, all sessions | per session | accepted / sessions | peak RSS | "
          "in flight at the reading | written at the reading | release to last reply | stored / relayed | runs |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for srv in SERVERS + sorted(set(runs) - set(SERVERS)):
        kvs = runs.get(srv)
        if not kvs:
            continue
        growth = med([num(kv, "mib_growth") for kv in kvs])
        per = med([num(kv, "mib_per_session") for kv in kvs])
        # VmHWM can lag VmRSS a little (per-thread RSS counters): the larger.
        hwm = med([max(num(kv, "hwm_kib") or 0, num(kv, "rss1_kib") or 0) or None for kv in kvs])
        flight = med([num(kv, "in_flight_kib") for kv in kvs])
        accepted = [int(num(kv, "accepted") or 0) for kv in kvs]
        total = max(int(num(kv, "sessions") or 0) for kv in kvs)
        acc = f"{min(accepted)}" if min(accepted) == max(accepted) else f"{min(accepted)}–{max(accepted)}"
        written = [num(kv, "written_bytes") or 0 for kv in kvs]
        full = max(num(kv, "bytes") or 0 for kv in kvs)
        wr = "all" if full and min(written) >= full else f"{min(written) / 2**20:,.0f} of {full / 2**20:,.0f} MiB"
        fin = med([num(kv, "finish_seconds") for kv in kvs])
        stored = [kv.get("stored") or kv.get("relayed") for kv in kvs if "stored" in kv or "relayed" in kv]
        print(
            f"| {srv} | {fmt(growth)} MiB | {fmt(per)} MiB | {acc} / {total} | "
            f"{fmt(hwm / 1024 if hwm is not None else None)} MiB | "
            f"{'0' if flight == 0 else fmt(flight / 1024 if flight is not None else None)} MiB | {wr} | "
            f"{fmt(fin)} s | {'/'.join(stored) if stored else '–'} | {len(kvs)} |"
        )
    print()
    print("RSS: `VmRSS` of the server process (for tokio-relay the smtpd's, not its upstream's), "
          "read once the client has written every body (or gave up waiting) and a pause has "
          "passed; median of the runs. Peak RSS: `VmHWM` at the end (the dots and replies "
          "included). In flight: bytes in the kernel between the two (the server's unread "
          "Recv-Q plus the client's Send-Q) at the reading, which the RSS does not count: a "
          "server that stops reading leaves the bodies there. Stored / relayed: messages in the "
          "Maildir (tokio-maildir), or counted by the upstream smtp-sink (tokio-relay).")
    if sizes:
        print(f"Sizes: {sizes}.")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--peak")
    ap.add_argument("--counts", default="")
    ap.add_argument("--criterion", action="append", default=[])
    ap.add_argument("--held", default="")
    args = ap.parse_args()
    data = list(rows(sys.stdin))

    if args.peak:
        v = med([derive("a", kv).get("v") for s, sc, _, kv in data if s == args.peak and sc == "gpeak"])
        if v:
            print(f"{v:.0f}")
        return

    cells = {}
    for srv, sc, _run, kv in data:
        if sc in SCENARIOS:
            cells.setdefault((sc, srv), []).append((derive(sc, kv), kv))
    ceiling = [num(kv, "mb_per_s") for s, _, _, kv in data if s == "iperf3"]

    if cells:
        print("| scenario | server | generator | result | vs smtp-sink | srv CPU s / 1k msgs | srv CPU | gen CPU | CPU-bound | runs |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for sc, (desc, unit, better, _) in SCENARIOS.items():
            base = cells.get((sc, BASE))
            base_v = med([d.get("v") for d, _ in base]) if base else None
            base_v2 = med([d.get("v2") for d, _ in base]) if base else None
            for srv in SERVERS + sorted({s for (c, s) in cells if c == sc} - set(SERVERS)):
                runs = cells.get((sc, srv))
                if not runs:
                    continue
                ds = [d for d, _ in runs]
                v = med([d.get("v") for d in ds])
                gen = runs[0][1].get("gen", "?")
                if runs[0][1].get("pipelined") == "not-offered":
                    gen += " (no PIPELINING offered: lock-step)"
                if sc in ("g", "h"):
                    v2 = med([d.get("v2") for d in ds])
                    rate = med([d.get("rate") for d in ds])
                    result = f"{fmt(v)} / {fmt(v2)} ms at {fmt(rate, 0)} msgs/s"
                    ratio = (
                        f"{v / base_v:.2f}× / {v2 / base_v2:.2f}×"
                        if v and base_v and v2 and base_v2
                        else "–"
                    )
                else:
                    result = f"{fmt(v)} {unit}"
                    ratio = f"{v / base_v:.2f}×" if v is not None and base_v else "–"
                sp = med([d.get("srv_pct") for d in ds])
                gp = med([d.get("gen_pct") for d in ds])
                print(
                    f"| ({sc}) {desc} | {srv} | {gen} | {result} | {ratio} | "
                    f"{fmt(med([d.get('cpu_per_k') for d in ds]))} | "
                    f"{fmt(sp, 0) + ' %' if sp is not None else '–'} | "
                    f"{fmt(gp, 0) + ' %' if gp is not None else '–'} | {bound(sp, gp)} | {len(ds)} |"
                )
        print()
        print("Result: median of the runs. `vs smtp-sink`: result ÷ smtp-sink's result "
              "(throughput: higher is better; RSS and latency: lower is better). "
              "srv/gen CPU: the server's / the load generator's user+system CPU time over "
              "the run's wall time (100 % = one core; the machine has two).")
        if args.counts:
            print(f"Sizes: {args.counts} (messages per run; F = idle sessions; G = seconds of paced load).")
    if ceiling:
        print(f"Loopback ceiling (iperf3, one TCP stream, 3 s): {fmt(med(ceiling))} MB/s.")

    held(data, args.held)

    crit = []
    for path in args.criterion:
        try:
            lines = open(path, encoding="utf-8", errors="replace").read().splitlines()
        except OSError:
            continue
        prev = ""
        for line in lines:
            m = re.match(r"^(\S.*?)?\s+(time|thrpt):\s+\[(.*)\]", line)
            if m and "%" in m.group(3):
                continue  # criterion's "change:" against the previous run
            if m:
                name = (m.group(1) or prev).strip()
                crit.append((name, m.group(2), m.group(3)))
                prev = name
            elif line.strip() and not line.startswith(("Benchmarking", " ", "Found", "Gnuplot")):
                prev = line.strip()
    if crit:
        print()
        print("Core criterion benches (`cargo bench -p smtp-proto --bench command|data -- --warm-up-time 1 --measurement-time 3`):")
        print()
        print("| bench | what | [low median high] |")
        print("|---|---|---|")
        for name, kind, val in crit:
            print(f"| {name} | {kind} | {val} |")
        thr = {n: v.split() for n, k, v in crit if k == "thrpt"}
        dec = next((v for n, v in thr.items() if n.startswith("data_decode")), None)
        ref = next((v for n, v in thr.items() if n.startswith("memchr")), None)
        if dec and ref and len(dec) >= 4 and len(ref) >= 4 and dec[3] == ref[3]:
            print()
            print(f"DataDecoder ÷ memchr newline count (medians): {float(dec[2]) / float(ref[2]):.2f}")


if __name__ == "__main__":
    main()
