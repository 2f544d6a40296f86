#!/usr/bin/env python3
"""bench/plot_soak.py: draws the soak run's time series (bench/soak.sh writes
soak.csv): resident memory of the postmaster and of the gptoss worker over
time, the kills marked (SIGTERM grey, SIGKILL red), and below it the calls
ended per second over the trailing 30 s; on stdout a table of each process's
RSS (first, largest and last sample).  Plain SVG, no plotting library needed:
    python3 bench/plot_soak.py SOAK_CSV OUT_SVG"""
import csv
import sys

W, H, L, R, T = 860, 560, 80, 30, 40
TOP_H, GAP, BOT_H = 300, 70, 110


def main():
    rows = list(csv.DictReader(open(sys.argv[1])))
    t = [float(r["t_s"]) for r in rows]
    pm = [int(r["postmaster_rss_kb"]) / 1024.0 for r in rows]
    wk = [int(r["worker_rss_kb"]) / 1024.0 if int(r["worker_rss_kb"]) > 0 else None for r in rows]
    ended = [int(r["calls_ended"]) for r in rows]
    kills = [(float(r["t_s"]), r["event"]) for r in rows if r["event"] in ("SIGTERM", "SIGKILL")]
    t_max = max(t[-1], 1.0)
    rss_top = max([v for v in pm + wk if v is not None] + [1.0]) * 1.15
    # calls ended per second over the trailing 30 s (a kill ends a batch of calls at once)
    rate = []
    j = 0
    for i in range(len(t)):
        while t[i] - t[j] > 30:
            j += 1
        rate.append((ended[i] - ended[j]) / (t[i] - t[j]) if t[i] > t[j] else 0.0)
    rate_top = max(rate + [1.0]) * 1.1

    def x(v):
        return L + (W - L - R) * v / t_max

    def y_rss(v):
        return T + TOP_H * (1 - v / rss_top)

    def y_rate(v):
        return T + TOP_H + GAP + BOT_H * (1 - v / rate_top)

    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">' % (W, H),
           '<rect width="100%" height="100%" fill="white"/>',
           '<text x="%d" y="22" font-size="15">Soak run: resident memory (VmRSS) of the postmaster and the gptoss worker</text>' % L]
    step = 10 ** len(str(int(rss_top))) / 10
    while rss_top / step < 4:
        step /= 2
    v = 0.0
    while v <= rss_top:
        out.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>' % (L, y_rss(v), W - R, y_rss(v)))
        out.append('<text x="%d" y="%.1f" text-anchor="end">%g</text>' % (L - 6, y_rss(v) + 4, v))
        v += step
    out.append('<text x="18" y="%d" transform="rotate(-90 18 %d)" text-anchor="middle">RSS (MiB)</text>' % (T + TOP_H // 2, T + TOP_H // 2))
    for v, label in ((0, "0"), (rate_top / 1.1, "%.0f" % (rate_top / 1.1))):
        out.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>' % (L, y_rate(v), W - R, y_rate(v)))
        out.append('<text x="%d" y="%.1f" text-anchor="end">%s</text>' % (L - 6, y_rate(v) + 4, label))
    out.append('<text x="18" y="%d" transform="rotate(-90 18 %d)" text-anchor="middle">calls/s (30 s)</text>'
               % (T + TOP_H + GAP + BOT_H // 2, T + TOP_H + GAP + BOT_H // 2))
    minute = 60 if t_max <= 900 else 300
    m = 0
    while m <= t_max:
        out.append('<text x="%.1f" y="%d" text-anchor="middle">%d</text>' % (x(m), T + TOP_H + 16, m // 60))
        out.append('<text x="%.1f" y="%d" text-anchor="middle">%d</text>' % (x(m), T + TOP_H + GAP + BOT_H + 16, m // 60))
        m += minute
    out.append('<text x="%d" y="%d" text-anchor="middle">minutes</text>' % ((L + W - R) // 2, H - 12))
    for tk, ev in kills:
        colour = "#d62728" if ev == "SIGKILL" else "#888"
        for y0, y1 in ((T, T + TOP_H), (T + TOP_H + GAP, T + TOP_H + GAP + BOT_H)):
            out.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="%s" stroke-dasharray="4,3"/>' % (x(tk), y0, x(tk), y1, colour))
        out.append('<text x="%.1f" y="%d" fill="%s" text-anchor="middle" font-size="10">%s</text>' % (x(tk), T - 4, colour, ev))

    def polylines(values, y, colour):
        seg = []
        for tv, v in zip(t, values):
            if v is None:
                if len(seg) > 1:
                    out.append('<polyline points="%s" fill="none" stroke="%s" stroke-width="2"/>' % (" ".join(seg), colour))
                seg = []
            else:
                seg.append("%.1f,%.1f" % (x(tv), y(v)))
        if len(seg) > 1:
            out.append('<polyline points="%s" fill="none" stroke="%s" stroke-width="2"/>' % (" ".join(seg), colour))

    polylines(pm, y_rss, "#1f77b4")
    polylines(wk, y_rss, "#ff7f0e")
    polylines(rate, y_rate, "#2ca02c")
    for i, (name, colour) in enumerate((("postmaster", "#1f77b4"), ("gptoss worker (a new process after each kill)", "#ff7f0e"))):
        out.append('<rect x="%d" y="%d" width="14" height="4" fill="%s"/>' % (L + 20, T + TOP_H - 40 + 18 * i, colour))
        out.append('<text x="%d" y="%d">%s</text>' % (L + 40, T + TOP_H - 34 + 18 * i, name))
    out.append('</svg>')
    with open(sys.argv[2], "w") as f:
        f.write("\n".join(out) + "\n")
    print_rss_table(rows)


def print_rss_table(rows):
    """Markdown on stdout: RSS of the postmaster and of each worker process, first/max/last sample."""
    procs = [("postmaster", [r for r in rows if int(r["postmaster_rss_kb"]) > 0], "postmaster_rss_kb")]
    for pid in dict.fromkeys(r["worker_pid"] for r in rows if int(r["worker_rss_kb"]) > 0):
        procs.append(("worker pid %s" % pid, [r for r in rows if r["worker_pid"] == pid and int(r["worker_rss_kb"]) > 0], "worker_rss_kb"))
    print("| process | from s | to s | samples | RSS first MiB | RSS max MiB | RSS last MiB |")
    print("|---|---|---|---|---|---|---|")
    for name, rs, col in procs:
        v = [int(r[col]) / 1024.0 for r in rs]
        print("| %s | %.0f | %.0f | %d | %.1f | %.1f | %.1f |" % (name, float(rs[0]["t_s"]), float(rs[-1]["t_s"]), len(v), v[0], max(v), v[-1]))


if __name__ == "__main__":
    main()
