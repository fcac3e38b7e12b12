#!/usr/bin/python3
"""bench/mover_impact.py - what the tier mover costs the users (`make bench-mover`).

Owns: the mover-impact benchmark of docs/BENCHMARKS.md: IMAP FETCH latency
with the tier mover idle against the same load with the mover moving at its
full budget.  Target (the tiering issue's): p99 within 10% of idle.

One state directory, loaded once: `--accounts` accounts (user0..) with
`--messages` each, delivered over SMTP by bench/smtp_load --mix realistic
(sizes log-normal 2 KiB..2 MiB, MIME mix), two tiers (fast = the blob
directory, archive beside it).  Then, alternating, `--rounds` times:

  idle   the daemon with no fast-tier target: nothing to move;
  busy   the same daemon restarted with a fast-tier target of 1% of the
         mail, a pass every 100 ms and tier.promote_days 1: it demotes
         almost everything at tier.move_rate (20 MB/s by default), and the
         load's own reads make messages promotable, so promotions and the
         demotions they cause keep it moving for the whole round.

In each round bench/imap_load runs fetch-bodies (LOGIN, SELECT, UID FETCH
1:* BODY.PEEK[], LOGOUT) with `--clients` clients for `--iterations`
sessions each; its FETCH p50/p99 are the figures.  The busy rounds also
record how many bytes the mover moved while the load ran (from /metrics),
so a busy round in which the mover did nothing shows as such.

Loopback only, every phase bounded in count and time; the daemon is stopped
in a finally block.  Run as root (the daemon drops to `strata`) or as any
user.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import scale  # noqa: E402  (same directory: Node, import, smtp_load)


def metrics(node):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % node.admin, timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(strata_tier_[a-z_]+)(\{[^}]*\})? ([0-9.e+-]+)$", line)
        if m:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def moved_bytes(m):
    return sum(v for k, v in m.items() if k.startswith("strata_tier_move_bytes_total"))


def fetch_round(node, clients, iterations, accounts):
    exe = os.path.join(ROOT, "build", "bench", "imap_load")
    out = subprocess.run([exe, "--port", str(node.imap), "--scenario", "fetch-bodies", "--clients", str(clients),
                          "--iterations", str(iterations), "--accounts", str(accounts), "--width", "0",
                          "--domain", scale.DOMAIN, "--password", scale.PASSWORD, "--duration-max", "600"],
                         capture_output=True, text=True, timeout=700)
    if out.returncode != 0:
        raise RuntimeError("imap_load: %s" % out.stderr[-2000:])
    r = json.loads(out.stdout.strip().splitlines()[-1])
    if r.get("errors") or r.get("failed_sessions"):
        raise RuntimeError("imap_load reported %s errors: %s" % (r["errors"], r))
    return r


def command_latency(r):
    """(p50, p99) of the scenario's main command (the FETCH), in ms."""
    return r["latency_ms"]["p50"], r["latency_ms"]["p99"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--strata", default=os.path.join(ROOT, "build", "strata"))
    ap.add_argument("--accounts", type=int, default=20)
    ap.add_argument("--messages", type=int, default=250, help="per account")
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--iterations", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--results", default=os.path.join(HERE, "results"),
                    help="directory for mover-impact-<date>.json")
    args = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix="strata-mover-", dir="/var/tmp")
    os.chmod(workdir, 0o755)
    node = scale.Node(args.strata, workdir, "node")
    archive = os.path.join(node.state, "archive")
    node.opts.update({"tier.names": "fast,archive", "tier.archive.path": archive, "tier.promote_days": "1"})
    result = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "rounds": []}
    try:
        scale.import_accounts(node, args.accounts)
        node.start()
        load = scale.smtp_load(node, args.accounts, args.accounts * args.messages, 11, concurrency=16)
        result["corpus"] = {"messages": load["accepted"], "bytes": load["bytes_sent"]}
        node.stop()
        one_percent = max(65536, load["bytes_sent"] // 100)
        for rnd in range(args.rounds):
            for mode in ("idle", "busy"):
                if mode == "busy":
                    node.opts.update({"tier.fast.capacity": str(one_percent), "tier.interval": "100ms"})
                else:
                    node.opts.pop("tier.fast.capacity", None)
                    node.opts["tier.interval"] = "1h"
                node.start()
                time.sleep(1)
                m0 = moved_bytes(metrics(node))
                t0 = time.monotonic()
                r = fetch_round(node, args.clients, args.iterations, args.accounts)
                secs = time.monotonic() - t0
                m1 = moved_bytes(metrics(node))
                p50, p99 = command_latency(r)
                row = {"round": rnd + 1, "mode": mode, "fetch_p50_ms": p50, "fetch_p99_ms": p99,
                       "msgs_per_s": r["messages_per_s"], "moved_mb": (m1 - m0) / 1e6, "seconds": secs}
                result["rounds"].append(row)
                scale.log("round %d %-4s: FETCH p50 %.1f ms p99 %.1f ms, mover moved %.1f MB in %.1f s"
                          % (rnd + 1, mode, p50, p99, row["moved_mb"], secs))
                node.stop()
    finally:
        node.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    def med(mode, key):
        v = sorted(x[key] for x in result["rounds"] if x["mode"] == mode)
        return v[len(v) // 2]
    for mode in ("idle", "busy"):
        result[mode] = {k: med(mode, k) for k in ("fetch_p50_ms", "fetch_p99_ms", "moved_mb")}
    ratio = result["busy"]["fetch_p99_ms"] / result["idle"]["fetch_p99_ms"]
    result["p99_ratio"] = ratio
    os.makedirs(args.results, exist_ok=True)
    path = os.path.join(args.results, "mover-impact-%s.json" % time.strftime("%Y-%m-%d", time.gmtime()))
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print("| mover | FETCH p50 (ms) | FETCH p99 (ms) | moved during the load (MB) |")
    print("|---|---:|---:|---:|")
    for mode in ("idle", "busy"):
        x = result[mode]
        print("| %s | %.1f | %.1f | %.1f |" % (mode, x["fetch_p50_ms"], x["fetch_p99_ms"], x["moved_mb"]))
    print("\np99 busy / idle: %.2fx (target <= 1.10x): %s" % (ratio, "met" if ratio <= 1.10 else "missed"))
    return 0 if ratio <= 1.10 else 1


if __name__ == "__main__":
    sys.exit(main())
