//! Near-duplicate detection end to end, through the timely operator: recall and precision on
//! controlled copies of the shared web sample, identical verdicts with 1, 2 and 4 workers, and a
//! persisted index that still catches copies after a restart with another worker count.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use timely::dataflow::operators::{Input, Inspect, Probe};
use timely::dataflow::{InputHandle, ProbeHandle};
use webscale_rl_operators::Verdicts;
use webscale_rl_operators::minhash::{NearDedupConfig, exact_jaccard};
use webscale_rl_operators::near_dedup::NearDedup;
use webscale_rl_records::{DeadLetter, Document, Origin, Stage};

/// (id, offset, detail of the `near_duplicate` dead letter if dropped).
type Verdict = (String, i64, Option<String>);

fn sample_path() -> PathBuf {
    std::env::var_os("WEBSCALE_SAMPLE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/web/sample.jsonl")
        })
}

/// Sample documents of `min_words..=max_words` words, at most `limit`, in file order.
fn sample(min_words: usize, max_words: usize, limit: usize) -> Vec<(String, String)> {
    let path = sample_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("sample is JSONL");
            (
                v["id"].as_str().expect("id").to_string(),
                v["text"].as_str().expect("text").to_string(),
            )
        })
        .filter(|(_, t)| (min_words..=max_words).contains(&t.split_whitespace().count()))
        .take(limit)
        .collect()
}

fn doc(id: &str, text: &str, offset: i64) -> Document {
    Document {
        id: id.to_string(),
        text: text.to_string(),
        url: None,
        source: None,
        meta: None,
        filter_model: None,
        origin: Origin {
            topic: "sample".into(),
            partition: 0,
            offset,
        },
        words: Default::default(),
    }
}

/// Runs the stage on `workers` threads; documents of each epoch are spread round-robin over the
/// workers' inputs. Returns every verdict, sorted.
fn run(workers: usize, cfg: NearDedupConfig, epochs: Vec<(u64, Vec<Document>)>) -> Vec<Verdict> {
    let out: Arc<Mutex<Vec<Verdict>>> = Arc::new(Mutex::new(Vec::new()));
    let sink = out.clone();
    timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let mut input = InputHandle::new();
        let probe = ProbeHandle::new();
        let (passed, dropped) = (sink.clone(), sink.clone());
        let cfg = cfg.clone();
        worker.dataflow(|scope| {
            let docs = scope.input_from(&mut input).container::<Vec<Document>>();
            let Verdicts {
                passed: ok,
                rejected: dead,
            } = docs.near_dedup(cfg);
            ok.inspect(move |d: &Document| {
                passed
                    .lock()
                    .unwrap()
                    .push((d.id.clone(), d.origin.offset, None))
            })
            .probe_with(&probe);
            dead.inspect(move |d: &DeadLetter| {
                assert_eq!(
                    (d.stage, d.reason.as_str()),
                    (Stage::NearDedup, "near_duplicate")
                );
                dropped.lock().unwrap().push((
                    d.doc_id.clone().expect("a document"),
                    d.offset,
                    Some(d.detail.clone()),
                ))
            })
            .probe_with(&probe);
        });
        for (epoch, docs) in &epochs {
            input.advance_to(*epoch);
            for d in docs.iter().skip(index).step_by(peers) {
                input.send(d.clone());
            }
        }
        input.close();
        while worker.step() {}
    })
    .expect("timely runs")
    .join()
    .into_iter()
    .for_each(|r| r.expect("worker finished"));
    let mut verdicts = out.lock().unwrap().clone();
    verdicts.sort();
    verdicts
}

/// The id a `near_duplicate` detail names.
fn earlier_id(detail: &str) -> &str {
    detail.rsplit_once(" jaccard=").expect("detail format").0
}

/// splitmix64: reproducible randomness without a dependency.
fn rand(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A random word no sample text contains, so edits add only new shingles.
fn filler(state: &mut u64) -> String {
    format!("zq{}", rand(state) % 1_000_000)
}

/// A variant of `text` aimed at Jaccard `target` with the original (5-word shingles), by one of
/// four kinds of edit; the exact Jaccard is measured afterwards.
fn variant(text: &str, target: f64, kind: usize, seed: u64) -> String {
    let mut s = seed;
    let mut words: Vec<String> = text.split_whitespace().map(str::to_string).collect();
    let n = words.len().saturating_sub(4).max(1) as f64;
    match kind {
        // Scattered word replacements: each removes up to 5 shingles and adds 5.
        0 => {
            let k = (n * (1.0 - target) / (5.0 * (1.0 + target))).round() as usize;
            for _ in 0..k.max(1) {
                let i = (rand(&mut s) % words.len() as u64) as usize;
                words[i] = filler(&mut s);
            }
        }
        // Inserted words: each breaks 4 shingles and adds 5.
        1 => {
            let k = (n * (1.0 - target) / (4.0 + 5.0 * target)).round() as usize;
            for _ in 0..k.max(1) {
                let i = (rand(&mut s) % (words.len() as u64 + 1)) as usize;
                words.insert(i, filler(&mut s));
            }
        }
        // Truncation: the variant's shingles are a subset.
        2 => {
            let keep = ((words.len() as f64 - 4.0) * target + 4.0).round() as usize;
            words.truncate(keep.clamp(5, words.len()));
        }
        // Boilerplate added around the text (navigation, cookie banner, footer).
        _ => {
            let m = (n * (1.0 - target) / target).round() as usize;
            let head = m / 3;
            let mut out: Vec<String> = (0..head).map(|_| filler(&mut s)).collect();
            out.append(&mut words);
            out.extend((head..m).map(|_| filler(&mut s)));
            words = out;
        }
    }
    words.join(" ")
}

#[test]
fn recall_and_precision_on_controlled_copies() {
    let cfg = NearDedupConfig::default();
    let originals = sample(80, 1500, 700);
    assert!(originals.len() >= 250, "sample too small");
    let targets = [0.97, 0.92, 0.88, 0.8, 0.7, 0.5, 0.4, 0.3];
    let mut variants = Vec::new();
    for (i, (id, text)) in originals.iter().enumerate() {
        let target = targets[i % targets.len()];
        let v = variant(text, target, (i / targets.len()) % 4, i as u64);
        let exact = exact_jaccard(text, &v, &cfg);
        variants.push((format!("variant/{id}"), v, exact, id.clone()));
    }
    let epoch1: Vec<Document> = originals
        .iter()
        .enumerate()
        .map(|(i, (id, text))| doc(id, text, i as i64))
        .collect();
    let epoch2: Vec<Document> = variants
        .iter()
        .enumerate()
        .map(|(i, (id, text, _, _))| doc(id, text, 100_000 + i as i64))
        .collect();
    let texts: HashMap<String, String> = originals.iter().cloned().collect();
    let verdicts = run(1, cfg.clone(), vec![(1_000, epoch1), (2_000, epoch2)]);
    let by_id: HashMap<&str, &Option<String>> =
        verdicts.iter().map(|(id, _, d)| (id.as_str(), d)).collect();

    // Unrelated sample documents: one is only dropped for a document it really shares text with.
    let mut sample_dups = 0;
    for (id, _) in &originals {
        if let Some(detail) = by_id[id.as_str()] {
            let earlier = earlier_id(detail);
            let j = exact_jaccard(&texts[id], &texts[earlier], &cfg);
            assert!(
                j >= 0.5,
                "{id} dropped as a copy of {earlier}, exact J {j:.3}"
            );
            sample_dups += 1;
        }
    }

    let (mut high, mut high_caught, mut low, mut low_flagged) = (0, 0, 0, 0);
    let mut caught_at: BTreeMap<u32, (u32, u32)> = BTreeMap::new();
    for (id, text, exact, original) in &variants {
        let detail = by_id[id.as_str()];
        let bucket = caught_at.entry((exact * 10.0) as u32).or_default();
        bucket.0 += 1;
        if detail.is_some() {
            bucket.1 += 1;
        }
        if *exact >= 0.85 {
            high += 1;
            high_caught += detail.is_some() as u32;
        } else if *exact <= 0.5 {
            low += 1;
            if let Some(detail) = detail {
                // A drop against some other document is fine only if it really shares text.
                let earlier = earlier_id(detail);
                let j = if earlier == original {
                    *exact
                } else {
                    exact_jaccard(text, &texts[earlier], &cfg)
                };
                if j <= 0.5 {
                    low_flagged += 1;
                }
            }
        }
    }
    let recall = high_caught as f64 / high as f64;
    let flagged = low_flagged as f64 / low as f64;
    eprintln!(
        "originals {} (dropped as copies of each other: {sample_dups}); J>=0.85: {high_caught}/{high} caught \
         ({recall:.3}); J<=0.5: {low_flagged}/{low} flagged ({flagged:.3}); by J decile (n, caught): {caught_at:?}",
        originals.len()
    );
    assert!(
        // The tests' slice of the sample gives about 100 of each.
        high >= 75 && low >= 75,
        "too few variants: {high} high, {low} low"
    );
    assert!(recall >= 0.95, "recall {recall:.3} at J >= 0.85");
    assert!(flagged <= 0.01, "{flagged:.3} flagged at J <= 0.5");
}

/// Originals, copies (some in the same epoch as their original, some later), replays of the
/// same message and unrelated documents, over three epochs.
fn mixed_input() -> Vec<(u64, Vec<Document>)> {
    let originals = sample(60, 800, 160);
    let mut epochs: Vec<(u64, Vec<Document>)> = vec![(10, vec![]), (20, vec![]), (30, vec![])];
    for (i, (id, text)) in originals.iter().enumerate() {
        let e = i % 3;
        let offset = (i * 10) as i64;
        epochs[e].1.push(doc(id, text, offset));
        let copy = variant(text, [0.95, 0.85, 0.75, 0.6][i % 4], i % 4, i as u64);
        let copy_epoch = if i % 2 == 0 { e } else { (e + 1).min(2) };
        // Fed before the original in the same epoch, but later in origin order: it must lose.
        epochs[copy_epoch]
            .1
            .insert(0, doc(&format!("copy/{id}"), &copy, 5_000 + offset));
        if i % 7 == 0 {
            // A replay of the original message (same id and origin).
            epochs[2].1.push(doc(id, text, offset));
        }
    }
    epochs
}

#[test]
fn same_verdicts_with_1_2_and_4_workers() {
    let cfg = NearDedupConfig::default();
    let input = mixed_input();
    let one = run(1, cfg.clone(), input.clone());
    let dropped = one.iter().filter(|v| v.2.is_some()).count();
    let copies = one.iter().filter(|v| v.0.starts_with("copy/")).count();
    eprintln!("{} verdicts, {dropped} dropped, {copies} copies", one.len());
    assert!(dropped >= copies / 2, "too few duplicates found: {dropped}");
    // Replays are never copies of themselves; originals come first in origin order.
    for (id, _, detail) in &one {
        if let Some(detail) = detail {
            assert_ne!(earlier_id(detail), id, "{id} dropped as a copy of itself");
        }
    }
    let two = run(2, cfg.clone(), input.clone());
    assert_eq!(one, two, "1 vs 2 workers");
    let four = run(4, cfg, input);
    assert_eq!(one, four, "1 vs 4 workers");
}

#[test]
fn restart_catches_copies_seen_before() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = NearDedupConfig {
        state_dir: Some(dir.path().to_path_buf()),
        // Every epoch durable: the first run's index must be on disk when it ends.
        sync_interval_ms: 0,
        ..NearDedupConfig::default()
    };
    webscale_rl_operators::lsh_index::check_state_dir(&cfg).unwrap();
    let originals = sample(100, 800, 40);
    let first: Vec<Document> = originals
        .iter()
        .enumerate()
        .map(|(i, (id, text))| doc(id, text, i as i64))
        .collect();
    let before = run(2, cfg.clone(), vec![(1_000, first)]);
    assert!(before.iter().all(|v| v.2.is_none()), "{before:?}");
    let files = std::fs::read_dir(dir.path().join("near_dedup"))
        .unwrap()
        .count();
    assert_eq!(files, cfg.partitions() as usize);

    // Another process lifetime, another worker count, a later day.
    let (id5, text5) = &originals[5];
    let (id7, text7) = &originals[7];
    let (id9, text9) = &originals[9];
    let fresh = sample(100, 800, 60).pop().unwrap();
    let edited = variant(text5, 0.9, 0, 42);
    let second = vec![
        doc("copy-of-5", &edited, 500),
        doc(id7, text7, 7),
        doc("exact-copy-of-9", text9, 501),
        doc(&fresh.0, &fresh.1, 502),
    ];
    let after = run(3, cfg.clone(), vec![(90_000_000, second)]);
    let verdict: HashMap<&str, Option<&str>> = after
        .iter()
        .map(|(id, _, d)| (id.as_str(), d.as_deref().map(earlier_id)))
        .collect();
    assert_eq!(verdict["copy-of-5"], Some(id5.as_str()));
    assert_eq!(verdict["exact-copy-of-9"], Some(id9.as_str()));
    assert_eq!(
        verdict[id7.as_str()],
        None,
        "a replay is not a copy of itself"
    );
    assert_eq!(verdict[fresh.0.as_str()], None);

    // Without the persisted index, the copies pass: the test can tell.
    let in_memory = NearDedupConfig {
        state_dir: None,
        ..cfg
    };
    let forgotten = run(
        1,
        in_memory,
        vec![(90_000_000, vec![doc("copy-of-5", &edited, 500)])],
    );
    assert_eq!(forgotten[0].2, None);
}
