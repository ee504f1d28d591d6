#!/usr/bin/env bash
# The demo on the local model (issue 12): QA pairs and wall time of `demo` as a new user runs it,
# through the ignored e2e test that asserts >= 5 pairs in under 10 minutes. Figures for
# BENCHMARKS.md ("The demo"). Run from the repository root; the model is fetched on first use.
set -euo pipefail
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build --release --features local-model
nproc | sed 's/^/cores: /'
/usr/bin/time -f 'wall %e s, max RSS %M KB' \
    cargo test --release --features local-model --test e2e -- --ignored --nocapture \
    the_demo_on_the_local_model_emits_qa_pairs
