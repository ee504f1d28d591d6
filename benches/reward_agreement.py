#!/usr/bin/env python3
"""Agreement of the `score` reward and of Hugging Face's Math-Verify with hand labels (issue 17).

Runs `webscale-rl score` (rules only, no LLM judge) over benches/data/reward_labelled.jsonl and
Math-Verify (`verify(parse(gold), parse(response))`, any alias of a `a|b` truth, each alias also
tried as `$alias$`) over the same
pairs, and prints, per category and overall, the share of pairs where each agrees with the label.

    python3 benches/reward_agreement.py [--bin target/release/webscale-rl] [--data FILE] [--misses]
"""
import argparse
import json
import os
import subprocess
import sys
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def score_rules(binary, items):
    """One `score` output per item, in order (the command keeps input order)."""
    lines = "".join(
        json.dumps({"response": it["response"], "ground_truth": it["ground_truth"]}) + "\n"
        for it in items
    )
    out = subprocess.run(
        [binary, "score", "-"], input=lines, capture_output=True, text=True, check=True
    ).stdout
    scored = [json.loads(l) for l in out.splitlines() if l.strip()]
    assert len(scored) == len(items), (len(scored), len(items))
    return scored


def math_verify(items):
    from math_verify import parse, verify

    verdicts = []
    for it in items:
        answer = parse(it["response"])
        ok = False
        # A bare LaTeX truth (`\\sqrt{8}`) parses to nothing unless it is in math mode, so each
        # alias is tried both as given and as `$alias$`: the more generous reading of Math-Verify.
        for alias in it["ground_truth"].split("|"):
            for gold in (alias.strip(), f"${alias.strip()}$"):
                try:
                    ok = ok or bool(verify(parse(gold), answer))
                except Exception:  # a parse or verify failure is a 0, as in a trainer
                    pass
        verdicts.append(int(ok))
    return verdicts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=None, help="webscale-rl binary (default: release, else debug)")
    ap.add_argument("--data", default=os.path.join(ROOT, "benches/data/reward_labelled.jsonl"))
    ap.add_argument("--misses", action="store_true", help="list the pairs `score` gets wrong")
    args = ap.parse_args()
    binary = args.bin
    if binary is None:
        for profile in ("release", "debug"):
            cand = os.path.join(ROOT, "target", profile, "webscale-rl")
            if os.path.exists(cand):
                binary = cand
                break
    if binary is None:
        sys.exit("no webscale-rl binary: build it or pass --bin")
    items = [json.loads(l) for l in open(args.data) if l.strip()]
    rules = score_rules(binary, items)
    mv = math_verify(items)

    per = defaultdict(lambda: [0, 0, 0])  # n, score agrees, math-verify agrees
    for it, r, m in zip(items, rules, mv):
        for key in (it["category"], it["category"].split("_")[0] + " (all)", "total"):
            per[key][0] += 1
            per[key][1] += int(r["score"] == it["label"])
            per[key][2] += int(m == it["label"])
    order = sorted(k for k in per if k != "total" and "(all)" not in k)
    order += sorted(k for k in per if "(all)" in k) + ["total"]
    print(f"| category | pairs | `score` rules | Math-Verify |")
    print(f"|---|---:|---:|---:|")
    for k in order:
        n, a, b = per[k]
        print(f"| {k} | {n} | {a}/{n} ({100 * a / n:.1f} %) | {b}/{n} ({100 * b / n:.1f} %) |")
    if args.misses:
        print()
        for it, r, m in zip(items, rules, mv):
            if r["score"] != it["label"]:
                print(
                    f"[{it['category']}] label={it['label']} score={r['score']} ({r['method']}) "
                    f"mv={m} truth={it['ground_truth']!r} extracted={r['extracted']!r}"
                )


if __name__ == "__main__":
    main()
