#!/usr/bin/env python3
"""Validate the few-shot demonstration libraries (data/fewshot/*.jsonl).

Usage:
    python3 data/fewshot/check_fewshot.py [--dir DIR] [--sample SAMPLE.jsonl] [--min-per-domain N]

DIR defaults to this script's directory; SAMPLE defaults to the shared web sample
(../shared/data/web/sample.jsonl seen from the repository root, or $WEBSCALE_SAMPLE).
Exit status 0 when every check passes, 1 otherwise (each failure is printed).

Checks, per example (one JSON object per line):
  * the line parses; all required fields are present, non-empty strings;
  * `domain` is one of the 10 domains and matches the file's slug;
  * `source_id` names a document of the sample and `source` equals that document's `source`;
  * `excerpt` is 300-900 characters, a verbatim substring of that document's text, and cut at
    sentence (or line) boundaries;
  * `answer` is short (at most 6 words) and, normalized (lowercase, punctuation stripped,
    whitespace collapsed), appears as whole words in the normalized excerpt -- or, for examples
    flagged `"computed": true` (Math), is a single number equal to the value of the example's
    `computation` (an arithmetic expression whose operands all appear in the excerpt or question);
  * the normalized answer does not occur in the normalized question (no leakage);
  * the question ends with "?" and avoids source-referring phrases ("the text", "the passage",
    "the article", "according to", ...);
and per library: at least N (default 3) examples per domain, no duplicate questions.
"""
from __future__ import annotations

import argparse
import ast
import json
import operator
import os
import re
import sys
import unicodedata
from pathlib import Path

DOMAINS = {
    "Math": "math",
    "Technology & Engineering": "technology_engineering",
    "Coding": "coding",
    "Social Science": "social_science",
    "Natural Science": "natural_science",
    "Travel & Lifestyle": "travel_lifestyle",
    "Commerce & Economics": "commerce_economics",
    "Medicine & Health": "medicine_health",
    "Education": "education",
    "Other": "other",
}
REQUIRED = ["domain", "source_id", "source", "excerpt", "persona", "question", "answer"]
EXCERPT_MIN, EXCERPT_MAX = 300, 900
ANSWER_MAX_WORDS = 6
BANNED = [
    r"\bthe text\b", r"\bthe passage\b", r"\bthe article\b", r"\baccording to\b", r"\bthe excerpt\b",
    r"\bthe document\b", r"\bthe material\b", r"\bthis (?:text|passage|article|excerpt|document)\b",
    r"\bthe above\b", r"\bmentioned above\b", r"\bthe author\b", r"\bthe given\b",
]
SENTENCE_END = set('.!?"\'”’)]')


def normalize(s: str) -> str:
    """Lowercase, every punctuation/symbol character -> space, whitespace collapsed."""
    s = unicodedata.normalize("NFKC", s).lower()
    s = "".join(" " if unicodedata.category(c)[0] in "PS" else c for c in s)
    return " ".join(s.split())


def contains_words(haystack: str, needle: str) -> bool:
    """Whole-word containment of normalized strings."""
    return f" {needle} " in f" {haystack} "


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def eval_arith(expr: str) -> tuple[float, list[float]]:
    """Evaluate + - * / ( ) over numeric literals; returns (value, operands)."""
    operands: list[float] = []

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            operands.append(float(node.value))
            return float(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        raise ValueError(f"unsupported element in computation: {ast.dump(node)}")

    return ev(ast.parse(expr, mode="eval")), operands


NUM_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def numbers_in(text: str) -> set[float]:
    out = set()
    for m in NUM_RE.finditer(text):
        try:
            out.add(float(m.group().replace(",", "")))
        except ValueError:
            pass
    return out


def parse_number_answer(ans: str) -> tuple[float, int] | None:
    """'$16,009' / '25.1%' / '94,857' -> (value, decimals). None unless the answer is one number
    with at most a currency sign, percent sign or trailing unit word."""
    m = re.fullmatch(r"\s*[$£€]?\s*(-?\d[\d,]*(?:\.(\d+))?)\s*(%|[A-Za-z]+)?\s*", ans)
    if not m:
        return None
    return float(m.group(1).replace(",", "")), len(m.group(2) or "")


def boundary_ok(text: str, start: int, excerpt: str) -> list[str]:
    errs = []
    before = text[:start].rstrip(" \t")
    if before and before[-1] not in "\n.!?:;\"'”’)|" :
        errs.append(f"excerpt does not start at a sentence/line boundary (preceded by {before[-20:]!r})")
    end = start + len(excerpt)
    after = text[end:]
    ends_sentence = excerpt.rstrip()[-1:] in SENTENCE_END
    ends_line = after == "" or after[:1] in "\n\r" or after.lstrip(" \t")[:1] in ("\n", "")
    if not (ends_sentence or ends_line):
        errs.append(f"excerpt does not end at a sentence/line boundary (ends with {excerpt[-20:]!r})")
    return errs


def default_sample(script_dir: Path) -> Path:
    env = os.environ.get("WEBSCALE_SAMPLE")
    if env:
        return Path(env)
    repo = script_dir.parent.parent  # data/fewshot -> repo root
    return repo.parent / "shared" / "data" / "web" / "sample.jsonl"


def check(dir_: Path, sample_path: Path, min_per_domain: int) -> tuple[list[str], dict[str, int]]:
    errors: list[str] = []
    docs = {}
    with open(sample_path, encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            docs[d["id"]] = d

    counts = {d: 0 for d in DOMAINS}
    questions: dict[str, str] = {}
    files = sorted(dir_.glob("*.jsonl"))
    slugs = {p.stem for p in files}
    for slug in DOMAINS.values():
        if slug not in slugs:
            errors.append(f"missing library file {slug}.jsonl")

    for path in files:
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            where = f"{path.name}:{lineno}"

            def err(msg: str) -> None:
                errors.append(f"{where}: {msg}")

            try:
                ex = json.loads(line)
            except json.JSONDecodeError as e:
                err(f"invalid JSON: {e}")
                continue
            if not isinstance(ex, dict):
                err("line is not a JSON object")
                continue
            missing = [k for k in REQUIRED if not isinstance(ex.get(k), str) or not ex[k].strip()]
            if missing:
                err(f"missing/empty fields: {missing}")
                continue
            dom = ex["domain"]
            if dom not in DOMAINS:
                err(f"unknown domain {dom!r}")
            elif DOMAINS[dom] != path.stem:
                err(f"domain {dom!r} belongs in {DOMAINS[dom]}.jsonl")
            else:
                counts[dom] += 1

            doc = docs.get(ex["source_id"])
            excerpt, q, a = ex["excerpt"], ex["question"], ex["answer"]
            if doc is None:
                err(f"source_id {ex['source_id']!r} not in the sample")
            else:
                if ex["source"] != doc["source"]:
                    err(f"source {ex['source']!r} != document's source {doc['source']!r}")
                pos = doc["text"].find(excerpt)
                if pos < 0:
                    err("excerpt is not a verbatim substring of the source document")
                else:
                    for e in boundary_ok(doc["text"], pos, excerpt):
                        err(e)
            if not EXCERPT_MIN <= len(excerpt) <= EXCERPT_MAX:
                err(f"excerpt length {len(excerpt)} outside {EXCERPT_MIN}-{EXCERPT_MAX}")

            n_words = len(a.split())
            if n_words > ANSWER_MAX_WORDS:
                err(f"answer has {n_words} words (max {ANSWER_MAX_WORDS}): {a!r}")
            na, nq, ne = normalize(a), normalize(q), normalize(excerpt)
            if not na:
                err("answer is empty after normalization")
                continue
            if ex.get("computed") is True:
                num = parse_number_answer(a)
                comp = ex.get("computation")
                if num is None:
                    err(f"computed answer must be a single number: {a!r}")
                elif not isinstance(comp, str) or not comp.strip():
                    err("computed example needs a `computation` expression")
                else:
                    try:
                        value, operands = eval_arith(comp)
                    except (ValueError, SyntaxError, ZeroDivisionError) as e:
                        err(f"bad computation {comp!r}: {e}")
                    else:
                        target, decimals = num
                        if round(value, decimals) != target:
                            err(f"computation {comp} = {value} does not give answer {a!r}")
                        avail = numbers_in(excerpt) | numbers_in(q)
                        # 100 (percent scaling) is a conventional constant
                        stray = [o for o in operands if o not in avail and o != 100]
                        if stray:
                            err(f"computation operands not found in excerpt/question: {stray}")
            elif "computed" in ex and ex["computed"] is not False:
                err("`computed` must be true or false")
            elif not contains_words(ne, na):
                err(f"answer {a!r} not found in the excerpt")
            if contains_words(nq, na):
                err(f"question contains the answer {a!r}")
            if not q.rstrip().endswith("?"):
                err("question does not end with '?'")
            for pat in BANNED:
                if re.search(pat, q, flags=re.IGNORECASE):
                    err(f"question refers to its source ({pat})")
            key = normalize(q)
            if key in questions:
                err(f"duplicate question (also {questions[key]})")
            questions[key] = where

    for dom, n in counts.items():
        if n < min_per_domain:
            errors.append(f"domain {dom!r} has {n} examples (need >= {min_per_domain})")
    return errors, counts


def main() -> int:
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, default=here, help="directory of *.jsonl libraries")
    ap.add_argument("--sample", type=Path, default=None, help="the shared web sample (JSON lines)")
    ap.add_argument("--min-per-domain", type=int, default=3)
    args = ap.parse_args()
    sample = args.sample or default_sample(here)
    if not sample.is_file():
        print(f"sample not found: {sample} (pass --sample or set WEBSCALE_SAMPLE)", file=sys.stderr)
        return 2
    errors, counts = check(args.dir, sample, args.min_per_domain)
    for dom, n in counts.items():
        print(f"{n:3d}  {dom}")
    print(f"{sum(counts.values()):3d}  total")
    if errors:
        print(f"\n{len(errors)} problem(s):")
        for e in errors:
            print(f"  - {e}")
        return 1
    print("OK: all few-shot libraries are valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
