#!/usr/bin/env python3
"""Compares two model_ref.py fixtures of the same checkpoint and prompts (for
example HF in bfloat16 against HF in float32): top-1 agreement over all
positions (and where the first fixture's top-2 margin exceeds 0.05), largest
logsumexp difference, and greedy continuations that are identical.  Prints
one JSON line; this is how sensitive the model itself is to rounding.

    python3 compare_refs.py REFERENCE.json OTHER.json
"""
import json
import sys


def main():
    ref = json.load(open(sys.argv[1]))
    other = json.load(open(sys.argv[2]))
    agree = total = wide_agree = wide_total = greedy_same = 0
    lse_diff = 0.0
    for p, q in zip(ref["prompts"], other["prompts"]):
        if p["ids"] != q["ids"]:
            sys.exit("the fixtures hold different prompts")
        for a, b, margin, la, lb in zip(p["argmax"], q["argmax"], p["margin"], p["lse"], q["lse"]):
            total += 1
            agree += a == b
            if margin > 0.05:
                wide_total += 1
                wide_agree += a == b
            lse_diff = max(lse_diff, abs(la - lb))
        greedy_same += p["greedy"] == q["greedy"]
    print(json.dumps({"top1_agree": agree, "positions": total,
                      "top1_agree_margin_gt_0.05": wide_agree, "positions_margin_gt_0.05": wide_total,
                      "lse_max_diff": lse_diff, "greedy_identical": greedy_same,
                      "prompts": len(ref["prompts"])}))


if __name__ == "__main__":
    main()
