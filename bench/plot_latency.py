#!/usr/bin/python3
"""bench/plot_latency.py - latency percentiles of the ingest and read benchmarks.

Owns: one PNG, bench/results/latency.png, drawn from the JSON that
bench/run.py leaves in bench/results/ (ingest.json, read.json):
  left:  SMTP accept latency (p50, p90, p99) against concurrency, Strata and
         Postfix + Dovecot, log scale;
  right: per read scenario, the p50 and p99 of the command that does the
         work (FETCH, SEARCH, STORE, RETR; of several variants, the one
         with the highest p99), Strata and Dovecot, from the round with the
         median throughput of each stack.
Either half is left out when its JSON is missing.  Reads only; never runs a
benchmark.  make bench runs it after bench/run.py.
"""
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")

# The command whose latency a read scenario is about.
SCENARIO_COMMAND = {
    "fetch-bodies": "FETCH",
    "fetch-meta": "FETCH",
    "search": "SEARCH",
    "store": "STORE",
    "pop3-retr": "RETR",
}
STACK_COLOURS = {"strata": "#1f77b4", "reference": "#d62728", "dovecot": "#d62728"}


def load(name):
    path = os.path.join(RESULTS, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def median_round(rounds):
    """The round with the median throughput (the one the report's tables use)."""
    ok = [r for r in rounds if r.get("messages_per_s")]
    if not ok:
        return None
    ok.sort(key=lambda r: r["messages_per_s"])
    return ok[len(ok) // 2]


def command_latency(run, command):
    """p50/p99 of `command` in one round, or of the whole session's main step."""
    cmds = run.get("commands_ms", {})
    # Scenarios with several variants (SEARCH BODY, STORE +FLAGS, ...) show
    # the variant with the highest p99: the conservative one.
    found = [v for k, v in cmds.items()
             if (k == command or k.startswith(command + " ") or k.startswith("UID " + command))
             and v.get("count")]
    if found:
        worst = max(found, key=lambda v: v["p99"])
        return worst["p50"], worst["p99"]
    lat = run.get("latency_ms")
    if lat and lat.get("count", 1):
        return lat["p50"], lat["p99"]
    return None


def plot_ingest(ax, ingest):
    results = ingest["results"]
    labels = {"strata": "Strata", "reference": "Postfix + Dovecot"}
    for stack in ("strata", "reference"):
        per_c = results.get(stack, {})
        conc = sorted(int(c) for c in per_c)
        if not conc:
            continue
        for pct, style in (("p50", ":"), ("p90", "--"), ("p99", "-")):
            ys = [per_c[str(c)]["latency_ms"][pct] for c in conc]
            ax.plot(conc, ys, style, marker="o", color=STACK_COLOURS[stack],
                    label="%s %s" % (labels[stack], pct))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks([1, 10, 50])
    ax.set_xticklabels(["1", "10", "50"])
    ax.axhline(50, color="grey", linewidth=0.8)
    ax.text(1.05, 52, "p99 target at c=50: 50 ms", fontsize=7, color="grey")
    ax.set_xlabel("concurrent SMTP connections")
    ax.set_ylabel("accept latency, ms (log)")
    ax.set_title("SMTP ingest: accept latency")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)


def plot_read(ax, read):
    runs = read.get("runs", {})
    scenarios = [s for s in SCENARIO_COMMAND if s in runs]
    width = 0.2
    for i, scenario in enumerate(scenarios):
        for j, stack in enumerate(("strata", "dovecot")):
            rnd = median_round(runs[scenario].get(stack, []))
            lat = command_latency(rnd, SCENARIO_COMMAND[scenario]) if rnd else None
            if lat is None:
                continue
            x = i + (j - 0.5) * 2 * width
            ax.bar(x - width / 2, lat[0], width, color=STACK_COLOURS[stack], alpha=0.45,
                   label=("%s p50" % stack.capitalize()) if i == 0 else None)
            ax.bar(x + width / 2, lat[1], width, color=STACK_COLOURS[stack],
                   label=("%s p99" % stack.capitalize()) if i == 0 else None)
    ax.set_xticks(range(len(scenarios)))
    ax.set_xticklabels(["%s\n(%s)" % (s, SCENARIO_COMMAND[s]) for s in scenarios], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("command latency, ms (log)")
    ax.set_title("IMAP/POP3 reads: p50 (light) and p99 per command")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=7)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(RESULTS, "latency.png"))
    args = ap.parse_args()
    ingest, read = load("ingest.json"), load("read.json")
    if ingest is None and read is None:
        print("plot_latency: neither ingest.json nor read.json in bench/results", file=sys.stderr)
        return 1
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [p for p in ((plot_ingest, ingest), (plot_read, read)) if p[1] is not None]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.6))
    if len(panels) == 1:
        axes = [axes]
    for ax, (draw, data) in zip(axes, panels):
        draw(ax, data)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print("wrote %s" % os.path.relpath(args.out, ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
