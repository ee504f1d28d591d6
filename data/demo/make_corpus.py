#!/usr/bin/env python3
"""Builds data/demo/corpus.jsonl, the corpus `webscale-rl demo` runs on, from the shared sample.

The selection is deterministic, so running this again writes the same file byte for byte:

* good articles: documents that pass simple quality checks, taken per source in the order of a
  hash of their id (a fixed pseudo-random pick, not the first N, which would all be one site);
* low-quality pages listed by id below (link lists, a dictionary fragment, very short pages,
  boilerplate), so the quality filter has something to reject;
* duplicates: the shared sample has no exact or near duplicates (normalized text; word 5-gram
  Jaccard > 0.7), so three are derived from selected articles, under ids ending in `#...`.

Usage: python3 data/demo/make_corpus.py [SAMPLE] [OUT]
"""

import hashlib
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SAMPLE = os.path.join(HERE, "..", "..", "..", "shared", "data", "web", "sample.jsonl")
DEFAULT_OUT = os.path.join(HERE, "corpus.jsonl")

# Good articles taken per source, and the largest text accepted from each (bytes), which keeps
# the corpus small: WikiText articles are long.
GOOD_PER_SOURCE = {
    "dclm-annotated": 35,
    "fineweb": 25,
    "scrapinghub-aeb": 16,
    "wikitext2-test": 8,
}
MAX_TEXT_BYTES = {"wikitext2-test": 14_000}
DEFAULT_MAX_TEXT_BYTES = 9_000

# Pages a quality filter should drop, with why; kept in the order shown.
LOW_QUALITY = [
    ("dclm/majority_data/1", "blog stub: a title, one sentence and 'No comments'"),
    ("dclm/majority_data/178", "a photo credit only (5 words)"),
    ("dclm/majority_data/249", "a page heading only (9 words)"),
    ("dclm/majority_data/7", "changelog of bullet lines"),
    ("dclm/majority_data/89", "event listing: dates, prices, 'Not provided'"),
    ("dclm/majority_data/92", "dictionary fragment (definitions of 'knuckle joint')"),
    ("dclm/majority_data/343", "a product title repeated"),
    ("fineweb-textfixer/25", "link list of traffic tweets"),
    ("fineweb-textfixer/77", "navigation and footer boilerplate"),
    ("fineweb-textfixer/69", "list of headlines ending in 'Read more...'"),
    (
        "aeb/c81e134ed49902bcf69b551426b4a346c5a77ae993cac8bda68b5541a664ef4c",
        "sports box scores, mostly numbers",
    ),
    (
        "aeb/cc03ddb5ef7d5f1fdb8a87f5e6dfd058a2a70acedf2551655a898dc5c18eb79e",
        "Portuguese race calendar (not English)",
    ),
    ("wikitext2-test/28", "a one-sentence WikiText fragment"),
]

STOP_WORDS = {"the", "be", "to", "of", "and", "that", "have", "with"}
TERMINAL = (".", "!", "?", '"', "\u201d", "'", ")")


def norm_words(text):
    """Lowercased words without punctuation, as exact dedup normalizes them."""
    return re.sub(r"[^\w\s]", "", text.lower()).split()


def shingles(text, n=5):
    w = norm_words(text)
    return {tuple(w[i : i + n]) for i in range(max(1, len(w) - n + 1))}


def jaccard(a, b):
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


def looks_good(doc):
    """A conservative stand-in for the engine's quality filter: long enough, prose-like English."""
    text = doc["text"]
    size = len(text.encode("utf-8"))
    if size > MAX_TEXT_BYTES.get(doc["source"], DEFAULT_MAX_TEXT_BYTES):
        return False
    # Words as the engine counts them: tokens with a letter or digit (WikiText's pre-tokenized
    # " , " and " @-@ " are not words).
    words = [w for w in text.split() if any(c.isalnum() for c in w)]
    if not 150 <= len(words) <= 3_000:
        return False
    lowered = {w.lower() for w in words}
    if len(STOP_WORDS & lowered) < 5:
        return False
    alpha = sum(1 for w in words if any(c.isalpha() for c in w))
    if alpha / len(words) < 0.9:
        return False
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    if sum(1 for l in lines if l.endswith(TERMINAL)) / len(lines) < 0.6:
        return False
    if len(set(lines)) < len(lines):
        return False
    if "lorem ipsum" in text.lower() or "..." in text or "\u2026" in text:
        return False
    return True


def order_key(doc):
    return hashlib.sha256(doc["id"].encode("utf-8")).hexdigest()


def main():
    sample = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_SAMPLE
    out_path = sys.argv[2] if len(sys.argv) > 2 else DEFAULT_OUT
    with open(sample, encoding="utf-8") as f:
        docs = [json.loads(line) for line in f]
    by_id = {d["id"]: d for d in docs}
    low_ids = {i for i, _ in LOW_QUALITY}

    good = []
    for source, count in GOOD_PER_SOURCE.items():
        pool = sorted(
            (d for d in docs if d["source"] == source and d["id"] not in low_ids and looks_good(d)),
            key=order_key,
        )
        if len(pool) < count:
            sys.exit(f"only {len(pool)} good {source} documents, {count} wanted")
        good.extend(pool[:count])

    # Duplicates, derived from selected articles so that the original is in the corpus too.
    fineweb = [d for d in good if d["source"] == "fineweb"]
    aeb = [d for d in good if d["source"] == "scrapinghub-aeb"]
    wiki = [d for d in good if d["source"] == "wikitext2-test"]
    exact = dict(fineweb[0], id=fineweb[0]["id"] + "#mirror")
    # Same words, other whitespace: reflowed paragraphs and doubled spaces, as a re-crawl of a
    # page with another template gives. Equal after normalization.
    reflowed_text = "\n\n".join(
        "  ".join(line.split()) for line in aeb[0]["text"].splitlines() if line.strip()
    )
    reformatted = dict(aeb[0], id=aeb[0]["id"] + "#reformatted", text=reflowed_text)
    # The article without its last paragraph, as an earlier or truncated copy: a near duplicate.
    near_src = max(wiki, key=lambda d: d["text"].count("\n"))
    paragraphs = near_src["text"].rstrip("\n").split("\n")
    near = dict(near_src, id=near_src["id"] + "#truncated", text="\n".join(paragraphs[:-1]) + "\n")
    jac = jaccard(near["text"], near_src["text"])
    if not 0.7 < jac < 1.0:
        sys.exit(f"near duplicate has 5-gram Jaccard {jac:.3f}, outside (0.7, 1)")
    if norm_words(reformatted["text"]) != norm_words(aeb[0]["text"]):
        sys.exit("the reformatted copy does not normalize to its original")

    low = [by_id[i] for i, _ in LOW_QUALITY]
    # Interleave so a demo run meets rejects and duplicates early: each low-quality page and
    # duplicate follows a few good articles, and every copy comes after its original.
    good.sort(key=order_key)
    specials = low + [exact, reformatted, near]
    corpus = []
    step = max(1, len(good) // len(specials))
    originals = {exact["id"]: fineweb[0]["id"], reformatted["id"]: aeb[0]["id"], near["id"]: near_src["id"]}
    pending = list(specials)
    for i, d in enumerate(good):
        corpus.append(d)
        if (i + 1) % step == 0 and pending:
            placed = {c["id"] for c in corpus}
            nxt = pending[0]
            if nxt["id"] not in originals or originals[nxt["id"]] in placed:
                corpus.append(pending.pop(0))
    corpus.extend(pending)

    ids = [d["id"] for d in corpus]
    assert len(ids) == len(set(ids)), "duplicate ids"
    with open(out_path, "w", encoding="utf-8", newline="\n") as f:
        for d in corpus:
            record = {"id": d["id"], "source": d["source"], "url": d["url"], "text": d["text"]}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")

    counts = {}
    for d in corpus:
        counts[d["source"]] = counts.get(d["source"], 0) + 1
    print(f"wrote {len(corpus)} documents, {os.path.getsize(out_path)} bytes, to {out_path}")
    print("per source:", counts)
    print(f"near duplicate {near['id']}: 5-gram Jaccard {jac:.3f} with {near_src['id']}")


if __name__ == "__main__":
    main()
