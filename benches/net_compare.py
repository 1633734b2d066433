#!/usr/bin/env python3
"""gosched's net bench side by side with its Go and tokio twins, in one run.

    python3 benches/net_compare.py            # 5 rounds
    python3 benches/net_compare.py --rounds 9

Builds the three (`cargo bench --bench net --no-run`, `go build` of
benches/go/net, `cargo build --release` of benches/tokio-net), then runs
them in turn, round after round (gosched, Go, tokio, gosched, ...), so a
drift of the machine's speed hits all of them alike. Prints each round's
numbers, then per contender the median over rounds of: the 64-byte echo
round trip on one connection (p50, p99) and the 64-connection pipelined
throughput, with ratios to gosched's. gosched and Go run twice: with every
CPU, and on one P (`NET_PROCS=1`, `GOMAXPROCS=1`: one thread runs
goroutines, as tokio's current_thread runtime). Go is skipped with a note if `go` is
not installed.
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.path.join(ROOT, "target")

RTT = re.compile(r"net/rtt .*p50 ([\d.]+) µs\s+p99 ([\d.]+) µs")
PIPE = re.compile(r"net/pipelined .*: ([\d.]+) M msg/s")


def build():
    """Returns {name: argv} for every contender that could be built."""
    out = subprocess.run(
        ["cargo", "bench", "--bench", "net", "--no-run", "--message-format=json"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    exe = None
    for line in out.splitlines():
        m = re.search(r'"executable":"([^"]+)"', line)
        if m and "/net-" in m.group(1):
            exe = m.group(1)
    if exe is None:
        sys.exit("net_compare: cargo did not report the bench executable")
    # (argv, extra environment). The "1P" rows run on one P / GOMAXPROCS=1:
    # the resources of tokio's current_thread runtime (one thread).
    runners = {"gosched": ([exe, "--bench"], {}),
               "gosched 1P": ([exe, "--bench"], {"NET_PROCS": "1"})}
    if shutil.which("go"):
        go_exe = os.path.join(TARGET, "net-go")
        subprocess.run(["go", "build", "-o", go_exe, "."],
                       cwd=os.path.join(ROOT, "benches", "go", "net"), check=True)
        runners["go"] = ([go_exe], {})
        runners["go 1P"] = ([go_exe], {"GOMAXPROCS": "1"})
    else:
        print("net_compare: `go` not found (apt-get install -y golang-go): Go skipped")
    subprocess.run(
        ["cargo", "build", "--release", "--manifest-path",
         os.path.join(ROOT, "benches", "tokio-net", "Cargo.toml"),
         "--target-dir", os.path.join(TARGET, "tokio-net")],
        cwd=ROOT, check=True,
    )
    runners["tokio"] = ([os.path.join(TARGET, "tokio-net", "release", "gosched-tokio-net-twin")], {})
    return runners


def parse(name, text):
    """Rows (contender, rtt p50, rtt p99, M msg/s) from one run's output."""
    rows, cur = [], {}
    for line in text.splitlines():
        label = name
        if name == "tokio":
            parts = line.split()
            if len(parts) > 1:
                label = "tokio " + parts[1]
        m = RTT.search(line)
        if m:
            cur[label] = [float(m.group(1)), float(m.group(2)), None]
        m = PIPE.search(line)
        if m and label in cur:
            cur[label][2] = float(m.group(1))
    for label, (p50, p99, thr) in cur.items():
        rows.append((label, p50, p99, thr))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if args.rounds < 1:
        sys.exit(f"net_compare: --rounds {args.rounds}: expected at least 1")
    runners = build()
    results = {}
    for r in range(args.rounds):
        load = open("/proc/loadavg").read().split()[0]
        print(f"round {r + 1}/{args.rounds} (load {load})")
        for name, (argv, env) in runners.items():
            out = subprocess.run(argv, capture_output=True, text=True, timeout=600,
                                 env={**os.environ, **env})
            if out.returncode != 0:
                sys.exit(f"net_compare: {name} failed:\n{out.stdout}{out.stderr}")
            for label, p50, p99, thr in parse(name, out.stdout):
                results.setdefault(label, []).append((p50, p99, thr))
                print(f"  {label:<22} rtt p50 {p50:6.1f} µs  p99 {p99:6.1f} µs  pipelined {thr:.2f} M msg/s")
    med = {k: [statistics.median(x[i] for x in v) for i in range(3)] for k, v in results.items()}
    base = med.get("gosched")
    print(f"\nmedians over {args.rounds} round(s); ratio = contender / gosched "
          "(rtt: above 1 means gosched is faster; throughput: below 1 means gosched is faster)")
    print(f"  {'':<22} {'rtt p50':>9} {'ratio':>6} {'rtt p99':>9} {'ratio':>6} {'M msg/s':>8} {'ratio':>6}")
    for label, (p50, p99, thr) in med.items():
        print(f"  {label:<22} {p50:7.1f}µs {p50 / base[0]:6.2f} {p99:7.1f}µs {p99 / base[1]:6.2f} "
              f"{thr:8.2f} {thr / base[2]:6.2f}")


if __name__ == "__main__":
    main()
