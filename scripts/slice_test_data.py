#!/usr/bin/env python3
"""Cuts the tests' own slice of the project's shared data set (the `shared/data` folder beside the
checkout; its README gives sources and licences) into tests/data/, so `cargo test` needs nothing
outside the repository. A maintainer's tool: neither the tests nor CI run it.

Re-run from the repository root after the shared data changes: python3 scripts/slice_test_data.py
Deterministic: the same shared files give the same slice, byte for byte.
"""
import json
import pathlib

REPO = pathlib.Path(__file__).resolve().parent.parent
ROOT = REPO / "tests" / "data"
SHARED = REPO.parent / "shared" / "data"

# Web sample: the first documents of each source, plus every document a test names.
PER_SOURCE = {"dclm-annotated": 150, "fineweb": 100, "scrapinghub-aeb": 60, "wikitext2-test": 62}
NAMED = {
    "dclm/majority_data/141", "dclm/majority_data/178", "dclm/majority_data/198",
    "dclm/majority_data/461", "dclm/majority_data/53", "dclm/majority_data/61",
    "dclm/majority_data/7", "dclm/majority_data/89", "fineweb-textfixer/1",
    "fineweb-textfixer/25", "wikitext2-test/16",
}
# Long scrapinghub ids, named by prefix in the quality-filter tests.
NAMED_PREFIXES = ("aeb/23aaecd1", "aeb/5f03fc17", "aeb/85439e26", "aeb/8cad00dc", "aeb/e7d77f18")

# Benchmarks: the first items of each file, plus every item a test names (by line number).
ITEMS = 300
NAMED_ITEMS = {}


def main():
    (ROOT / "web").mkdir(exist_ok=True)
    (ROOT / "benchmarks").mkdir(exist_ok=True)
    seen = {}
    kept = []
    for line in (SHARED / "web" / "sample.jsonl").read_text().splitlines():
        doc = json.loads(line)
        src = doc["source"]
        seen[src] = seen.get(src, 0) + 1
        named = doc["id"] in NAMED or doc["id"].startswith(NAMED_PREFIXES)
        if seen[src] <= PER_SOURCE.get(src, 0) or named:
            kept.append(line)
    (ROOT / "web" / "sample.jsonl").write_text("\n".join(kept) + "\n")
    print(f"web/sample.jsonl: {len(kept)} documents")
    for path in sorted((SHARED / "benchmarks").glob("*.jsonl")):
        lines = path.read_text().splitlines()
        named = NAMED_ITEMS.get(path.name, set())
        out = [l for i, l in enumerate(lines) if i < ITEMS or i in named]
        (ROOT / "benchmarks" / path.name).write_text("\n".join(out) + "\n")
        print(f"benchmarks/{path.name}: {len(out)} of {len(lines)} items")


if __name__ == "__main__":
    main()
