#!/usr/bin/env python3
"""Two tokenlens binaries against each other, alternating in one invocation (speed work).

Each round runs `tokenlens bench --json` with binary A, then B (the order flips every round), on
the same image and thread count, so both see the same machine load. Per round the script takes
each side's median of every sample series and prints B / A per series: the median over rounds
and the spread. Below 1.0 B is faster. `--part decoder` times a VLM folder's prefill and decode
instead (`--model DIR`).

Usage:
    python scripts/bench_ab.py OLD_BINARY NEW_BINARY [--rounds 6] [--repeats 8] \
        [--methods cls_topk,hiprune,tome] [--part encoder|decoder] [--model DIR]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run(binary, args):
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    if args.part == "decoder":
        cmd = [binary, "bench", "--model", args.model, "--part", "decoder", "--repeats", str(args.repeats)]
    else:
        cmd = [binary, "bench", args.image, "--repeats", str(args.repeats), "--json", "--reducers", args.methods]
    done = subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True, text=True)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    if args.part == "decoder":
        return {"prefill": statistics.median(out["prefill"]), "decode": statistics.median(out["decode"])}
    series = {k: statistics.median(out[k]) for k in ("full", "encoder", "head")}
    for m in out["methods"]:
        series[m["name"] + " run"] = statistics.median(m["run"])
        series[m["name"] + " run+figures"] = statistics.median(m["run_figures"])
    return series


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--image", default="assets/chelsea.png")
    ap.add_argument("--methods", default="cls_topk,hiprune,tome")
    ap.add_argument("--part", choices=["encoder", "decoder"], default="encoder")
    ap.add_argument("--model", default=str(REPO / "target" / "smolvlm-256m-random"))
    args = ap.parse_args()
    ratios = {}
    for r in range(args.rounds):
        order = [("old", args.old), ("new", args.new)]
        if r % 2:
            order.reverse()
        got = {side: run(binary, args) for side, binary in order}
        for k, v in got["new"].items():
            ratios.setdefault(k, []).append(v / got["old"][k])
        print(f"round {r}: " + ", ".join(f"{k} {got['old'][k]:.1f}->{got['new'][k]:.1f}" for k in got["new"]),
              file=sys.stderr, flush=True)
    print(f"new / old, median over {args.rounds} rounds (range):")
    for k, rs in ratios.items():
        print(f"  {k:<24} {statistics.median(rs):.3f}x  ({min(rs):.3f}-{max(rs):.3f})")


if __name__ == "__main__":
    main()
