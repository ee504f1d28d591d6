"""datasketch's MinHash on the shared web sample, with the parameters of benches/minhash.rs.

Usage: python3 benches/minhash_datasketch.py [SAMPLE.jsonl]   (needs `pip install datasketch`)

Times the same work as the Rust signature benchmark: normalize (lowercase, strip punctuation,
fold whitespace), cut into 5-word shingles, and a 112-permutation MinHash per document
(`update_batch`, datasketch's vectorized path, with its default SHA-1 based 32-bit hash).
Reading and JSON parsing are outside the timing, as in Rust. As in Rust, the figure is per core:
bytes over this thread's CPU time (wall time is printed too, it differs on a busy machine).
Prints `datasketch_mb_per_s <MB/s>` for the Rust benchmark to compute the ratio.
"""

import json
import re
import sys
import time

from datasketch import MinHash

NUM_PERM = 14 * 8
NGRAM = 5
ROUNDS = 3
# Same effect as operators/src/normalize.rs: drop what is neither a word character nor space.
PUNCT = re.compile(r"[^\w\s]|_")


def shingles(text):
    words = PUNCT.sub("", text.lower()).split()
    if not words:
        return []
    if len(words) < NGRAM:
        return [" ".join(words).encode()]
    return [" ".join(words[i : i + NGRAM]).encode() for i in range(len(words) - NGRAM + 1)]


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "../shared/data/web/sample.jsonl"
    with open(path, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    total = sum(len(t.encode()) for t in texts)
    best_cpu = best_wall = float("inf")
    for _ in range(ROUNDS):
        wall, cpu = time.perf_counter(), time.thread_time()
        for text in texts:
            m = MinHash(num_perm=NUM_PERM, seed=1)
            sh = shingles(text)
            if sh:
                m.update_batch(sh)
        best_cpu = min(best_cpu, time.thread_time() - cpu)
        best_wall = min(best_wall, time.perf_counter() - wall)
    import datasketch

    print(
        f"datasketch {datasketch.__version__}: {len(texts)} documents, {total / 1e6:.2f} MB, "
        f"best of {ROUNDS}: {best_cpu:.2f} s CPU, {best_wall:.2f} s wall "
        f"({total / best_wall / 1e6:.2f} MB/s wall)"
    )
    print(f"datasketch_mb_per_s {total / best_cpu / 1e6:.3f}")


if __name__ == "__main__":
    main()
