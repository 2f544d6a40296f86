#!/usr/bin/env python3
"""bench/plot_throughput.py: draws bench/throughput.svg, two panels:
left, aggregate decode tokens/s against the number of sequences in flight
(gptoss CUDA backend on the H200 and H100, gpt-oss-120b on the H200, and
llama.cpp from targets.md); right, the serving-shaped cases of issue 13
(total tokens/s) against vLLM's published H100 figures and our targets.
Every number is a row of bench/RESULTS.md (the run is named in the legend).
Plain SVG, no plotting library needed: python3 bench/plot_throughput.py"""
import math
import os

# (name, colour, [(sequences, tok/s), ...])
DECODE = [
    ("gptoss 20b H200 (runs 35-36, e9171f5; 8: run 42; 256-1024: run 41)", "#1f77b4",
     [(1, 422), (8, 1649), (32, 4902), (64, 8058), (128, 11455), (256, 12917), (512, 19648), (1024, 30487)]),
    ("gptoss 20b H100 (run 21)", "#17becf", [(1, 356), (8, 1362), (32, 4157), (64, 7305), (128, 9133)]),
    ("gptoss 120b H200 (1, 64: run 47; 256: run 28)", "#9467bd", [(1, 275), (64, 2755), (256, 6596)]),
    ("llama.cpp 20b H200 (targets.md)", "#d62728", [(1, 267), (8, 488), (32, 1454), (64, 2325), (128, 3190)]),
    ("llama.cpp 20b H100 (targets.md)", "#ff9896", [(1, 245), (8, 467), (32, 1404), (64, 2199), (128, 3082)]),
]
DECODE_TARGETS = [(1, 560, "560"), (64, 10500, "10,500"), (128, 13000, "13,000")]
SERVING_CASES = ["(a) ShareGPT-like\n1,000 req", "(b) 500 x\n2,000/100", "(c) 1,000 x\n128/4", "(d) 500 x\n4,000/200"]
SERVING = [
    ("gptoss H200 (run 47, e236aef; b: run 48, f0c7ea0)", "#1f77b4", [15261, 33730, 42118, 28458]),
    ("gptoss H200 through SQL (run 47; b, d not run)", "#aec7e8", [15146, None, 41106, None]),
    ("vLLM 0.11 H100 (published)", "#d62728", [19129, 33150, 32612, 33823]),
    ("target H200", "#2ca02c", [25000, 36000, 36000, 36000]),
]
W, H = 1180, 470
TOP, BOTTOM = 60, 80
LEFT = (80, 600)			# x range of the left panel's plot area
RIGHT = (700, 1160)			# x range of the right panel's plot area
DECODE_MAX, SERVING_MAX = 32000.0, 60000.0
MAX_SEQS = 1024


def y_of(v, top):
    return TOP + (H - TOP - BOTTOM) * (1 - v / top)


def x_decode(n):
    return LEFT[0] + (LEFT[1] - LEFT[0]) * math.log2(n) / math.log2(MAX_SEQS)


def axis(out, x0, x1, top, step, label):
    for v in range(0, int(top) + 1, step):
        y = y_of(v, top)
        out.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>' % (x0, y, x1, y))
        out.append('<text x="%d" y="%.1f" text-anchor="end">%s</text>' % (x0 - 6, y + 4, format(v, ",")))
    mid = (TOP + H - BOTTOM) // 2
    out.append('<text x="%d" y="%d" transform="rotate(-90 %d %d)" text-anchor="middle">%s</text>'
               % (x0 - 58, mid, x0 - 58, mid, label))


def decode_panel(out):
    axis(out, LEFT[0], LEFT[1], DECODE_MAX, 4000, "generated tokens/s")
    out.append('<text x="%d" y="%d" font-size="14">Decode throughput against sequences in flight</text>' % (LEFT[0], TOP - 30))
    n = 1
    while n <= MAX_SEQS:
        x = x_decode(n)
        out.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#eee"/>' % (x, TOP, x, H - BOTTOM))
        out.append('<text x="%.1f" y="%d" text-anchor="middle">%d</text>' % (x, H - BOTTOM + 18, n))
        n *= 2
    out.append('<text x="%d" y="%d" text-anchor="middle">sequences in flight (log scale)</text>'
               % ((LEFT[0] + LEFT[1]) // 2, H - BOTTOM + 40))
    for i, (name, colour, pts) in enumerate(DECODE):
        line = " ".join("%.1f,%.1f" % (x_decode(b), y_of(v, DECODE_MAX)) for b, v in pts)
        out.append('<polyline points="%s" fill="none" stroke="%s" stroke-width="2.5"/>' % (line, colour))
        for b, v in pts:
            out.append('<circle cx="%.1f" cy="%.1f" r="3.5" fill="%s"/>' % (x_decode(b), y_of(v, DECODE_MAX), colour))
        out.append('<rect x="%d" y="%d" width="14" height="4" fill="%s"/>' % (LEFT[0] + 14, TOP + 10 + 17 * i, colour))
        out.append('<text x="%d" y="%d">%s</text>' % (LEFT[0] + 34, TOP + 16 + 17 * i, name))
    for b, v, label in DECODE_TARGETS:
        x, y = x_decode(b), y_of(v, DECODE_MAX)
        out.append('<circle cx="%.1f" cy="%.1f" r="5" fill="none" stroke="#2ca02c" stroke-width="2"/>' % (x, y))
        out.append('<text x="%.1f" y="%.1f" fill="#2ca02c">target %s</text>' % (x + 8, y - 8, label))


def serving_panel(out):
    axis(out, RIGHT[0], RIGHT[1], SERVING_MAX, 5000, "total (input + output) tokens/s")
    out.append('<text x="%d" y="%d" font-size="14">Serving-shaped runs (issue 13 item 1)</text>' % (RIGHT[0], TOP - 30))
    group = (RIGHT[1] - RIGHT[0]) / len(SERVING_CASES)
    bar = group / (len(SERVING) + 1)
    for c, case in enumerate(SERVING_CASES):
        x0 = RIGHT[0] + c * group + bar / 2
        for s, (name, colour, values) in enumerate(SERVING):
            if values[c] is None:
                continue
            y = y_of(values[c], SERVING_MAX)
            out.append('<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"/>'
                       % (x0 + s * bar, y, bar - 2, H - BOTTOM - y, colour))
        for k, part in enumerate(case.split("\n")):
            out.append('<text x="%.1f" y="%d" text-anchor="middle">%s</text>'
                       % (RIGHT[0] + (c + 0.5) * group, H - BOTTOM + 18 + 15 * k, part))
    for s, (name, colour, _) in enumerate(SERVING):
        out.append('<rect x="%d" y="%d" width="14" height="8" fill="%s"/>' % (RIGHT[0] + 14, TOP + 8 + 17 * s, colour))
        out.append('<text x="%d" y="%d">%s</text>' % (RIGHT[0] + 34, TOP + 16 + 17 * s, name))


def main():
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">' % (W, H),
           '<rect width="100%" height="100%" fill="white"/>']
    decode_panel(out)
    serving_panel(out)
    out.append('</svg>')
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "throughput.svg")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    print(path)


if __name__ == "__main__":
    main()
