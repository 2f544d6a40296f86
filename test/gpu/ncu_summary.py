#!/usr/bin/env python3
"""ncu_summary.py: per-kernel GPU time from an Nsight Compute CSV log.

Reads the CSV that `ncu --metrics gpu__time_duration.sum --csv --log-file F`
writes, groups launches by (kernel name, grid, block) and prints the groups by
total time, so that one profiled run shows where a step's time goes.

    python3 test/gpu/ncu_summary.py F [TITLE]
"""
import csv
import sys
from collections import defaultdict

UNITS = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3, "second": 1e6, "ns": 1e-3, "us": 1.0, "ms": 1e3}


def main():
    path = sys.argv[1]
    title = sys.argv[2] if len(sys.argv) > 2 else path
    rows = []
    with open(path, newline="") as f:
        lines = [ln for ln in f if ln.startswith('"')]
    for rec in csv.DictReader(lines):
        if rec.get("Metric Name") != "gpu__time_duration.sum":
            continue
        value = float(rec["Metric Value"].replace(",", ""))
        us = value * UNITS.get(rec.get("Metric Unit", "nsecond"), 1e-3)
        name = rec["Kernel Name"]
        short = name.split("(")[0][:70]
        rows.append((short, rec.get("Grid Size", ""), rec.get("Block Size", ""), us))
    groups = defaultdict(lambda: [0.0, 0])
    for short, grid, block, us in rows:
        g = groups[(short, grid, block)]
        g[0] += us
        g[1] += 1
    total = sum(v[0] for v in groups.values())
    print(f"== {title}: {len(rows)} launches, {total / 1e3:.2f} ms GPU time")
    print(f"{'total ms':>9} {'share':>6} {'count':>6} {'avg us':>9}  kernel [grid] [block]")
    for (short, grid, block), (us, n) in sorted(groups.items(), key=lambda kv: -kv[1][0])[:32]:
        print(f"{us / 1e3:9.3f} {100 * us / total:5.1f}% {n:6d} {us / n:9.2f}  {short} {grid} {block}")


if __name__ == "__main__":
    main()
