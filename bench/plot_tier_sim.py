#!/usr/bin/python3
"""bench/plot_tier_sim.py - the plot and tables of the tier placement benchmark.

Owns: nothing but its outputs.  Reads results of bench/tier_sim (--out
FILE.json), writes a PNG beside the first (the share of reads served by the
fast tier against the fast tier's size, one line per policy; variants
dashed) and prints Markdown tables (read share, byte share, moves per day,
reads by kind) for docs/BENCHMARKS.md "Tier placement".  Further files (runs
of the same model, e.g. variants with other tier settings) are merged in;
their policies are labelled with the settings that differ from the first's.

Usage: /usr/bin/python3 bench/plot_tier_sim.py RESULT.json [MORE.json ...] [--png OUT.png]
"""
import argparse
import json
import os
import sys

MAIN = ["strata", "age", "lru", "belady"]
LABEL = {
    "strata": "Strata (tier_place)",
    "age": "age-only (altmove / archive_days)",
    "lru": "LRU (size-aware)",
    "belady": "Belady (offline reference)",
    "strata-size": "variant: temperature per byte",
    "proto": "prototype: promotions displace colder",
    "proto-size": "prototype: displace + per byte",
    "strata-seen": "variant: skipped mail ranks as seen",
    "proto-all": "prototype: displace + per byte + skipped as seen",
}
KINDS = ["first", "same_day", "reread", "tail", "burst", "burst_reread"]


def load(path):
    with open(path) as f:
        return json.load(f)


def merge(docs):
    """The first document with the others' runs added; a run whose tier
    settings differ from the first's gets them in its policy name."""
    base = dict(docs[0])
    base["runs"] = list(docs[0]["runs"])
    for d in docs[1:]:
        if d["model"] != base["model"]:
            sys.exit("plot_tier_sim: %s: not the same model as the first file" % d.get("command"))
        diff = ["%s=%s" % (k.replace("_s", "").replace("_ms", ""), v)
                for k, v in sorted(d["settings"].items()) if base["settings"].get(k) != v]
        for r in d["runs"]:
            r = dict(r)
            if diff:
                r["policy"] = "%s [%s]" % (r["policy"], ", ".join(diff))
            base["runs"].append(r)
    return base


def label(policy):
    name, _, extra = policy.partition(" ")
    return LABEL.get(name, name) + ((" " + extra) if extra else "")


def runs_by(doc):
    """{policy: {pct: run}}, policies in a stable order (main ones first)."""
    out = {}
    for r in doc["runs"]:
        out.setdefault(r["policy"], {})[r["fast_pct"]] = r
    order = [p for p in MAIN if p in out] + sorted(p for p in out if p not in MAIN)
    return [(p, out[p]) for p in order]


def plot(doc, png):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for policy, by_pct in runs_by(doc):
        pcts = sorted(by_pct)
        ys = [100 * by_pct[p]["read_share"] for p in pcts]
        style = "-" if policy in MAIN else "--"
        ax.plot(pcts, ys, style, marker="o", label=label(policy))
    m = doc["model"]
    ax.set_xlabel("fast tier size (% of the data)")
    ax.set_ylabel("reads served by the fast tier (%)")
    ax.set_title("Tier placement: %d accounts, %d days measured (seed %d)"
                 % (m["accounts"], m["days"] - m["warmup_days"], m["seed"]))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def pct_cols(doc):
    return sorted({r["fast_pct"] for r in doc["runs"]})


def fmt_pct(v):
    return "%.1f%%" % (100 * v)


def tables(doc):
    cols = pct_cols(doc)
    rows = runs_by(doc)
    belady = dict(rows).get("belady", {})
    L = []
    L.append("| policy | " + " | ".join("fast %g%%: reads (bytes)" % c for c in cols) + " |")
    L.append("|---|" + "---:|" * len(cols))
    for policy, by_pct in rows:
        cells = []
        for c in cols:
            r = by_pct.get(c)
            if r is None:
                cells.append("")
                continue
            cell = "%s (%s)" % (fmt_pct(r["read_share"]), fmt_pct(r["byte_share"]))
            b = belady.get(c)
            if b and policy != "belady" and b["read_share"] > 0:
                cell += ", %.0f%% of Belady" % (100 * r["read_share"] / b["read_share"])
            cells.append(cell)
        L.append("| %s | %s |" % (label(policy), " | ".join(cells)))
    L.append("")
    L.append("Moves per day (measured window), promoted / demoted, MB:")
    L.append("")
    L.append("| policy | " + " | ".join("fast %g%%" % c for c in cols) + " |")
    L.append("|---|" + "---:|" * len(cols))
    for policy, by_pct in rows:
        cells = []
        for c in cols:
            r = by_pct.get(c)
            d = r["per_day"] if r else None
            cells.append("%.0f / %.0f" % (d["promoted_bytes"] / 1e6, d["demoted_bytes"] / 1e6) if d else "")
        L.append("| %s | %s |" % (label(policy), " | ".join(cells)))
    for c in cols:
        L.append("")
        L.append("Reads served by the fast tier by kind of read, fast tier at %g%%:" % c)
        L.append("")
        first = next((by[c] for _, by in rows if c in by), None)
        if first is None:
            continue
        L.append("| policy | " + " | ".join("%s (%d reads)" % (k, first["kinds"][k]["reads"]) for k in KINDS) + " |")
        L.append("|---|" + "---:|" * len(KINDS))
        for policy, by_pct in rows:
            r = by_pct.get(c)
            if r is None:
                continue
            cells = []
            for k in KINDS:
                kr = r["kinds"][k]
                cells.append(fmt_pct(kr["hits"] / kr["reads"]) if kr["reads"] else "")
            L.append("| %s | %s |" % (label(policy), " | ".join(cells)))
    return L


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", nargs="+")
    ap.add_argument("--png", help="default: the first JSON's path with .png")
    args = ap.parse_args()
    doc = merge([load(p) for p in args.json])
    png = args.png or os.path.splitext(args.json[0])[0] + ".png"
    plot(doc, png)
    print("\n".join(tables(doc)))
    print("\nplot: %s" % png, file=sys.stderr)


if __name__ == "__main__":
    main()
