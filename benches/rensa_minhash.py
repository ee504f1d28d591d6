#!/usr/bin/env python3
"""rensa's MinHash signatures over the texts of a JSONL corpus: the one step `benches/cpu_stages.rs`
compares the engine's whole CPU pipeline against.

The same work the engine's signature step does, the Python way rensa is used: lowercase, drop
punctuation, split into words, join 5-word shingles, and feed them to `RMinHash` (Rust core) with
112 permutations (the engine's 14 bands x 8 rows). Reading and JSON-decoding the file is outside the
timing; the time is the loop over the texts. Prints one JSON line: {"docs", "text_bytes", "seconds"}.

    pip install rensa
    python3 benches/rensa_minhash.py CORPUS.jsonl
"""

import json
import re
import sys
import time

from rensa import RMinHash

NUM_PERM = 112
NGRAM = 5
SEED = 42
# What the engine's normalization drops: every character neither alphanumeric nor whitespace.
PUNCT = re.compile(r"[^\w\s]|_")


def shingles(text):
    words = PUNCT.sub("", text.lower()).split()
    if len(words) <= NGRAM:
        return [" ".join(words)] if words else []
    return [" ".join(words[i : i + NGRAM]) for i in range(len(words) - NGRAM + 1)]


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    started = time.perf_counter()
    for text in texts:
        m = RMinHash(num_perm=NUM_PERM, seed=SEED)
        m.update(shingles(text))
        m.digest()
    seconds = time.perf_counter() - started
    text_bytes = sum(len(t.encode("utf-8")) for t in texts)
    print(json.dumps({"docs": len(texts), "text_bytes": text_bytes, "seconds": seconds}))


if __name__ == "__main__":
    main()
