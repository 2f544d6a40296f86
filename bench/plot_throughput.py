#!/usr/bin/env python3
"""bench/plot_throughput.py: draws bench/throughput.svg, aggregate decode
tokens/s against the number of sequences in flight, for gptoss (CUDA backend,
run 20 (H200) and run 21 (H100) in bench/RESULTS.md) and llama.cpp
(targets.md) on the same two cards.
Plain SVG, no plotting library needed: python3 bench/plot_throughput.py"""
import math
import os

BATCHES = [1, 8, 32, 64, 128]
SERIES = [
    ("gptoss CUDA, run 20 (H200)", "#1f77b4", [394, 1579, 4848, 8168, 9258]),
    ("gptoss CUDA, run 21 (H100)", "#17becf", [356, 1362, 4157, 7305, 9133]),
    ("llama.cpp (H200, targets.md)", "#d62728", [267, 488, 1454, 2325, 3190]),
    ("llama.cpp (H100, targets.md)", "#ff9896", [245, 467, 1404, 2199, 3082]),
]
# (batch, tok/s, label, label to the right of the mark?)
TARGETS = [(1, 540, "target H200 540", True), (1, 490, "target H100 490", True),
           (64, 7000, "target H200 7,000", False), (64, 6600, "target H100 6,600", False)]
W, H, L, R, T, B = 720, 440, 80, 30, 40, 60


def x_of(batch):
    return L + (W - L - R) * math.log2(batch) / math.log2(BATCHES[-1])


def y_of(tok_s, top=10000.0):
    return T + (H - T - B) * (1 - tok_s / top)


def main():
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">' % (W, H),
           '<rect width="100%" height="100%" fill="white"/>',
           '<text x="%d" y="22" font-size="15">Decode throughput against sequences in flight (gpt-oss-20b shapes)</text>' % L]
    for v in range(0, 10001, 2000):
        y = y_of(v)
        out.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>' % (L, y, W - R, y))
        out.append('<text x="%d" y="%.1f" text-anchor="end">%d</text>' % (L - 6, y + 4, v))
    for b in BATCHES:
        x = x_of(b)
        out.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#eee"/>' % (x, T, x, H - B))
        out.append('<text x="%.1f" y="%d" text-anchor="middle">%d</text>' % (x, H - B + 18, b))
    out.append('<text x="%d" y="%d" text-anchor="middle">sequences in flight (log scale)</text>' % ((L + W - R) // 2, H - 15))
    out.append('<text x="18" y="%d" transform="rotate(-90 18 %d)" text-anchor="middle">generated tokens/s</text>' % ((T + H - B) // 2, (T + H - B) // 2))
    for i, (name, colour, values) in enumerate(SERIES):
        pts = " ".join("%.1f,%.1f" % (x_of(b), y_of(v)) for b, v in zip(BATCHES, values))
        out.append('<polyline points="%s" fill="none" stroke="%s" stroke-width="2.5"/>' % (pts, colour))
        for b, v in zip(BATCHES, values):
            out.append('<circle cx="%.1f" cy="%.1f" r="3.5" fill="%s"/>' % (x_of(b), y_of(v), colour))
        out.append('<rect x="%d" y="%d" width="14" height="4" fill="%s"/>' % (L + 20, T + 14 + 18 * i, colour))
        out.append('<text x="%d" y="%d">%s</text>' % (L + 40, T + 20 + 18 * i, name))
    for i, (b, v, label, right) in enumerate(TARGETS):
        out.append('<circle cx="%.1f" cy="%.1f" r="5" fill="none" stroke="#2ca02c" stroke-width="2"/>' % (x_of(b), y_of(v)))
        out.append('<text x="%.1f" y="%.1f" fill="#2ca02c" text-anchor="%s">%s</text>'
                   % (x_of(b) + (10 if right else -10), y_of(v) - (14 if i % 2 == 0 else -4), "start" if right else "end", label))
    out.append('</svg>')
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "throughput.svg")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    print(path)


if __name__ == "__main__":
    main()
