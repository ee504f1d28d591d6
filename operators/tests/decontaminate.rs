//! Decontamination on the shared data: every benchmark file loads with its item count; web pages
//! of the shared sample with a real benchmark item pasted in are caught and the item named; the
//! sample itself passes, except for real overlaps, each shown; verdicts are the same with 1 and 2
//! workers.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use timely::dataflow::operators::{Input, Inspect, Probe};
use timely::dataflow::{InputHandle, ProbeHandle};
use webscale_rl_operators::Verdicts;
use webscale_rl_operators::benchmarks::{BenchmarkSet, load_path};
use webscale_rl_operators::decontaminate::{
    Benchmarks, Decontaminate, DecontaminateConfig, NgramIndex, find_overlap, normalize_for_overlap,
};
use webscale_rl_records::{DeadLetter, Document, Origin, Stage};

/// (id, detail of the `benchmark_overlap` dead letter if dropped).
type Verdict = (String, Option<String>);

fn shared(rel: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/")).join(rel)
}

/// The shared benchmark files, loaded once for all tests.
fn sets() -> &'static Vec<BenchmarkSet> {
    static SETS: OnceLock<Vec<BenchmarkSet>> = OnceLock::new();
    SETS.get_or_init(|| load_path(&shared("benchmarks")).expect("shared benchmarks load"))
}

fn benchmarks() -> Arc<Benchmarks> {
    static B: OnceLock<Arc<Benchmarks>> = OnceLock::new();
    B.get_or_init(|| {
        Arc::new(Benchmarks::from_sets(
            sets(),
            &DecontaminateConfig::default(),
        ))
    })
    .clone()
}

fn item(benchmark: &str, id: &str) -> &'static webscale_rl_operators::benchmarks::BenchmarkItem {
    let set = sets()
        .iter()
        .find(|s| s.name == benchmark)
        .expect("benchmark");
    set.items.iter().find(|i| i.id == id).expect("item")
}

fn sample() -> Vec<Document> {
    let text = std::fs::read_to_string(shared("web/sample.jsonl")).expect("shared sample");
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            let v: serde_json::Value = serde_json::from_str(line).expect("sample is JSONL");
            doc(
                v["id"].as_str().expect("id"),
                v["text"].as_str().expect("text"),
                i,
            )
        })
        .collect()
}

fn doc(id: &str, text: &str, offset: usize) -> Document {
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
            offset: offset as i64,
        },
        words: Default::default(),
    }
}

/// `insert` pasted as its own paragraph at the whitespace nearest the middle of `page`.
fn paste(page: &str, insert: &str) -> String {
    let mid = page.len() / 2;
    let cut = page[mid..]
        .find(char::is_whitespace)
        .map(|i| mid + i)
        .unwrap_or(page.len());
    format!("{}\n\n{}\n\n{}", &page[..cut], insert, &page[cut..])
}

/// Runs the document stage on `workers` threads, documents spread round-robin over the inputs in
/// two epochs. Returns every verdict, sorted.
fn run(workers: usize, docs: &[Document]) -> Vec<Verdict> {
    let out: Arc<Mutex<Vec<Verdict>>> = Arc::new(Mutex::new(Vec::new()));
    let sink = out.clone();
    let docs = Arc::new(docs.to_vec());
    let bench = benchmarks();
    timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let mut input = InputHandle::new();
        let probe = ProbeHandle::new();
        let (passed, dropped) = (sink.clone(), sink.clone());
        let ngrams = NgramIndex::build(&bench, index, peers);
        worker.dataflow(|scope| {
            let docs = scope.input_from(&mut input).container::<Vec<Document>>();
            let Verdicts {
                passed: ok,
                rejected: dead,
            } = docs.decontaminate(ngrams);
            ok.inspect(move |d: &Document| passed.lock().unwrap().push((d.id.clone(), None)))
                .probe_with(&probe);
            dead.inspect(move |d: &DeadLetter| {
                assert_eq!(
                    (d.stage, d.reason.as_str()),
                    (Stage::Decontaminate, "benchmark_overlap")
                );
                dropped.lock().unwrap().push((
                    d.doc_id.clone().expect("a document"),
                    Some(d.detail.clone()),
                ))
            })
            .probe_with(&probe);
        });
        let half = docs.len() / 2;
        for (epoch, part) in [(1u64, &docs[..half]), (2, &docs[half..])] {
            input.advance_to(epoch);
            for d in part.iter().skip(index).step_by(peers) {
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

/// The `key=value` fields of a detail, and its span.
fn parse_detail(detail: &str) -> (HashMap<&str, &str>, &str) {
    let (head, span) = detail.split_once(" span=\"").expect("detail has a span");
    let fields = head
        .split(' ')
        .map(|kv| kv.split_once('=').expect("key=value"))
        .collect();
    (fields, span.strip_suffix('"').expect("quoted span"))
}

fn norm(text: &str) -> String {
    normalize_for_overlap(text)
}

#[test]
fn every_shared_benchmark_loads_with_its_item_count() {
    let counts: Vec<(&str, usize)> = sets()
        .iter()
        .map(|s| (s.name.as_str(), s.items.len()))
        .collect();
    assert_eq!(
        counts,
        vec![
            // The tests' slice (scripts/slice_test_data.py): the first 300 items of each shared file
            // (all 164 of HumanEval).
            ("arc_challenge", 300),
            ("arc_easy", 300),
            ("gsm8k", 300),
            ("humaneval", 164),
            ("math", 300),
            ("mbpp", 300),
            ("mmlu", 300),
            ("triviaqa", 300),
        ]
    );
    for set in sets() {
        let with_text = set.items.iter().filter(|i| !i.segments.is_empty()).count();
        assert_eq!(
            with_text,
            set.items.len(),
            "{}: items without text",
            set.name
        );
    }
    // Scaffolding is trimmed, ids come from the files where they have them.
    assert_eq!(
        item("triviaqa", "1").segments,
        vec!["What type of animal is a dik-dik?"]
    );
    assert!(item("humaneval", "HumanEval/10").segments[0].contains("def make_palindrome"));
    assert!(item("mbpp", "21").segments[0].starts_with("Write a function"));
    let stats = benchmarks().stats().clone();
    assert!(stats.keys_distinct > 40_000, "{stats:?}");
    assert!(stats.whole_segments > 500, "{stats:?}");
}

/// (benchmark, item id, the text pasted, expected whole-item match).
fn contaminants() -> Vec<(&'static str, &'static str, String, bool)> {
    let seg = |b: &str, id: &str| item(b, id).segments[0].clone();
    vec![
        ("gsm8k", "17", seg("gsm8k", "17"), false),
        ("mmlu", "2", seg("mmlu", "2"), false),
        ("arc_challenge", "5", seg("arc_challenge", "5"), false),
        ("math", "42", seg("math", "42"), false),
        (
            "humaneval",
            "HumanEval/10",
            seg("humaneval", "HumanEval/10"),
            false,
        ),
        ("mbpp", "2", seg("mbpp", "2"), false),
        // 10 words, under the 13 of an n-gram: matched as a whole item.
        ("triviaqa", "0", seg("triviaqa", "0"), true),
        // A quiz page's layout: the question with its own prefix and punctuation changed.
        (
            "gsm8k",
            "0",
            format!(
                "Q1) {}",
                seg("gsm8k", "0").replace('’', "'").replace(". ", " - ")
            ),
            false,
        ),
    ]
}

#[test]
fn pasted_benchmark_items_are_caught_and_named_with_1_and_2_workers() {
    let pages = sample();
    let hosts: Vec<&Document> = pages
        .iter()
        .filter(|d| d.text.split_whitespace().count() > 300)
        .collect();
    let mut docs = Vec::new();
    for (i, (bench, id, text, _)) in contaminants().into_iter().enumerate() {
        let host = hosts[i * 7];
        docs.push(doc(
            &format!("pasted/{bench}/{id}"),
            &paste(&host.text, &text),
            10_000 + i,
        ));
        docs.push(doc(&format!("host/{}", host.id), &host.text, 20_000 + i));
    }
    // Twelve consecutive words of a long question are not an overlap.
    let q = &item("gsm8k", "17").segments[0];
    let twelve: Vec<&str> = q.split_whitespace().skip(3).take(12).collect();
    docs.push(doc(
        "partial/gsm8k/17",
        &paste(&hosts[3].text, &twelve.join(" ")),
        30_000,
    ));

    let one = run(1, &docs);
    let two = run(2, &docs);
    assert_eq!(one, two, "verdicts differ between 1 and 2 workers");
    let by_id: HashMap<&str, &Option<String>> =
        one.iter().map(|(id, d)| (id.as_str(), d)).collect();
    let index = NgramIndex::build(&benchmarks(), 0, 1);
    for (bench, id, text, whole) in contaminants() {
        let key = format!("pasted/{bench}/{id}");
        let detail = by_id[key.as_str()]
            .as_ref()
            .unwrap_or_else(|| panic!("{key} passed"));
        let (fields, span) = parse_detail(detail);
        assert_eq!(
            (fields["benchmark"], fields["item"]),
            (bench, id),
            "{detail}"
        );
        assert_eq!(fields["whole_item"], whole.to_string(), "{detail}");
        let words = span.split(' ').count();
        assert_eq!(fields["words"], words.to_string());
        if whole {
            assert_eq!(span, norm(&text));
        } else {
            assert_eq!(words, 13);
            // The first 13 words of the pasted text, normalized as they were matched.
            assert!(
                norm(&item(bench, id).segments[0]).contains(span),
                "{detail}"
            );
        }
        // The reference scan outside the dataflow agrees.
        let doc = docs.iter().find(|d| d.id == key).unwrap();
        let o = find_overlap(&doc.text, &index).expect("reference finds it");
        assert_eq!(&o.detail(), detail);
    }
    for (id, verdict) in &one {
        if id.starts_with("host/") || id.starts_with("partial/") {
            assert_eq!(verdict, &None, "{id} was dropped");
        }
    }
}

#[test]
fn the_clean_sample_passes_but_for_real_overlaps() {
    let docs = sample();
    let verdicts = run(2, &docs);
    assert_eq!(verdicts.len(), docs.len());
    let texts: HashMap<&str, &str> = docs
        .iter()
        .map(|d| (d.id.as_str(), d.text.as_str()))
        .collect();
    let hits: Vec<&Verdict> = verdicts.iter().filter(|(_, d)| d.is_some()).collect();
    for (id, detail) in &hits {
        let detail = detail.as_ref().unwrap();
        eprintln!("sample hit: {id}: {detail}");
        // A hit is a real overlap: its words are in the page and in the item it names.
        let (fields, span) = parse_detail(detail);
        assert!(norm(texts[id.as_str()]).contains(span), "{detail}");
        let it = item(fields["benchmark"], fields["item"]);
        assert!(
            it.segments.iter().any(|s| norm(s).contains(span)),
            "{detail}"
        );
    }
    assert!(
        hits.len() <= 3,
        "{} of {} sample pages dropped",
        hits.len(),
        docs.len()
    );
}

/// The common ways a copied item differs from its benchmark: a tokenizer's split clitics, curly
/// quotes, dashes for spaces, number words for digits (and back). Each perturbed copy is caught;
/// the untouched host pages are not.
#[test]
fn perturbed_copies_are_caught() {
    let pages = sample();
    let hosts: Vec<&Document> = pages
        .iter()
        .filter(|d| d.text.split_whitespace().count() > 300)
        .collect();
    let wendi = item("gsm8k", "4").segments[0].clone();
    assert!(wendi.contains("her chickens three cups") && wendi.contains("15 cups"));
    let first_sentence: String = wendi.split(". ").next().unwrap().to_string();
    let perturbed = [
        // A tokenizer's split clitic: "Wendi 's" (and "Wendi’s").
        (
            "clitic",
            wendi.replace("Wendi feeds", "Wendi 's hens get fed ; Wendi feeds"),
        ),
        ("curly", wendi.replace('\'', "’")),
        // Digits written out and number words as digits.
        (
            "numbers",
            wendi.replace("three", "3").replace("15", "fifteen"),
        ),
        // Hyphens where the item has spaces, an en dash between clauses.
        (
            "dashes",
            first_sentence.replace("mixed chicken feed", "mixed-chicken-feed") + " – " + &wendi,
        ),
    ];
    let mut docs = Vec::new();
    for (i, (kind, text)) in perturbed.iter().enumerate() {
        let host = hosts[i * 3];
        docs.push(doc(
            &format!("perturbed/{kind}"),
            &paste(&host.text, text),
            40_000 + i,
        ));
        docs.push(doc(&format!("host/{}", host.id), &host.text, 50_000 + i));
    }
    let verdicts = run(1, &docs);
    for (id, detail) in &verdicts {
        if id.starts_with("perturbed/") {
            let detail = detail.as_deref().unwrap_or_else(|| panic!("{id} passed"));
            assert!(detail.contains("gsm8k"), "{id}: {detail}");
        }
    }
    assert_eq!(
        verdicts.iter().filter(|(_, d)| d.is_some()).count(),
        perturbed.len(),
        "only the perturbed copies are dropped: {verdicts:?}"
    );
}

/// QA pairs through the stage as the pipeline runs it for pairs (with the fragment rules).
fn run_pairs(texts: &[String], fragments: bool) -> Vec<Verdict> {
    let out: Arc<Mutex<Vec<Verdict>>> = Arc::new(Mutex::new(Vec::new()));
    let sink = out.clone();
    let texts = Arc::new(texts.to_vec());
    let bench = benchmarks();
    timely::execute(timely::Config::thread(), move |worker| {
        let mut input = InputHandle::new();
        let probe = ProbeHandle::new();
        let (passed, dropped) = (sink.clone(), sink.clone());
        let ngrams = NgramIndex::build(&bench, 0, 1);
        worker.dataflow(|scope| {
            let records = scope.input_from(&mut input).container::<Vec<String>>();
            let Verdicts {
                passed: ok,
                rejected: dead,
            } = webscale_rl_operators::decontaminate::decontaminate_with(
                records,
                ngrams,
                fragments,
                |t: &String, out: &mut String| out.push_str(t),
                |t: &String, o| {
                    let mut d = DeadLetter::for_document(
                        &doc(t, t, 0),
                        Stage::Decontaminate,
                        "benchmark_overlap",
                        o.detail(),
                    );
                    d.doc_id = Some(t.clone());
                    d
                },
            );
            ok.inspect(move |t: &String| passed.lock().unwrap().push((t.clone(), None)))
                .probe_with(&probe);
            dead.inspect(move |d: &DeadLetter| {
                dropped
                    .lock()
                    .unwrap()
                    .push((d.doc_id.clone().unwrap(), Some(d.detail.clone())))
            })
            .probe_with(&probe);
        });
        input.advance_to(1u64);
        for t in texts.iter() {
            input.send(t.clone());
        }
        input.close();
        while worker.step() {}
    })
    .expect("timely runs");
    let mut v = out.lock().unwrap().clone();
    v.sort();
    v
}

/// A generated question that copies an item with a word blanked or replaced escapes the 13-gram
/// rule and is caught by the fragment rules; ordinary questions and a common phrase are not.
#[test]
fn pairs_copying_an_item_with_a_word_blanked_or_replaced_are_caught() {
    let q = item("gsm8k", "17").segments[0].clone();
    let words: Vec<&str> = q.split_whitespace().collect();
    assert!(words.len() >= 30, "{q}");
    // Every 12th word blanked: no 13 consecutive words survive, runs of 11 do.
    let blanked: Vec<&str> = words
        .iter()
        .enumerate()
        .map(|(i, w)| if i % 12 == 11 { "___" } else { w })
        .collect();
    // A short item (10 words, indexed whole) with its last word changed: no whole-item match,
    // a 9-word run, but 2 of its 3 fragments: the share rule.
    let trivia = item("triviaqa", "0").segments[0].clone();
    assert_eq!(trivia.split_whitespace().count(), 10, "{trivia}");
    let pairs = vec![
        format!("Question: {}\nAnswer: 18", blanked.join(" ")),
        format!("{}\nAnswer: onion", trivia.replace("vegetable?", "crop?")),
        "Which river did the 1969 survey team follow north to the delta?\nAnswer: the Nile"
            .to_string(),
        "My friend thought it would be a great idea to visit the museum on Sunday.\nAnswer: Sunday"
            .to_string(),
    ];
    let with = run_pairs(&pairs, true);
    let verdict =
        |v: &[(String, Option<String>)], t: &str| v.iter().find(|(x, _)| x == t).unwrap().1.clone();
    let detail = verdict(&with, &pairs[0]).expect("blanked copy caught");
    assert!(detail.contains("benchmark=gsm8k item=17"), "{detail}");
    assert!(detail.contains("words=11"), "{detail}");
    assert_eq!(verdict(&with, &pairs[2]), None);
    assert_eq!(
        verdict(&with, &pairs[3]),
        None,
        "a common phrase is not a copy"
    );
    let detail = verdict(&with, &pairs[1]).expect("a short item with a word changed is caught");
    assert!(detail.contains("benchmark=triviaqa item=0"), "{detail}");
    // Without the fragment rules (the document stage's rule) both copies slip through.
    let without = run_pairs(&pairs, false);
    assert_eq!(verdict(&without, &pairs[0]), None);
    assert_eq!(verdict(&without, &pairs[1]), None);
}
