//! The binary reward on real benchmark answers: every GSM8K answer in the formats models write it
//! in, MATH's own worked solutions against its answers, TriviaQA answers against their alias
//! lists; wrong numbers, near misses and other items' answers score 0.

use std::path::PathBuf;

use serde_json::{Value, json};
use webscale_rl_operators::reward::{Method, Score, score, score_aliases, score_line};

fn rows(file: &str) -> Vec<Value> {
    let path = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/data/benchmarks/"
    ))
    .join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("JSONL"))
        .collect()
}

/// `1234567` -> `1,234,567`.
fn with_commas(n: i64) -> String {
    let digits = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

#[test]
fn gsm8k_answers_in_every_format_score_1_and_near_misses_0() {
    let items = rows("gsm8k_test.jsonl");
    assert_eq!(items.len(), 300, "the tests' slice of GSM8K");
    let mut checked = 0;
    for item in &items {
        let solution = item["answer"].as_str().unwrap();
        let truth_text = solution.rsplit("####").next().unwrap().trim();
        let n: i64 = truth_text
            .replace(',', "")
            .parse()
            .expect("GSM8K answers are integers");
        let plain = n.to_string();
        let mut right = vec![
            format!("Let me think.\n#### {plain}"),
            format!("So the total is 5 + 3 = 8 and then more.\nThe answer is {plain}."),
            format!("Work...\nFinal answer: $\\boxed{{{plain}}}$"),
            format!("**Answer:** {}", with_commas(n)),
            format!("The answer is {plain}.0"),
            format!("The answer is ${}.", with_commas(n)),
            format!("Answer: {plain} dollars"),
            format!("She has 3 apples.\nIn total she ends up with {plain} of them."),
            format!("{plain}"),
        ];
        if n != 0 && n % 1000 == 0 {
            right.push(format!("Answer: {}e3", n / 1000));
        }
        // The ground truth as the whole solution (its `####` line is extracted), or as the number.
        for truth in [solution, truth_text] {
            for response in &right {
                let s = score(response, truth);
                assert_eq!(s.score, 1, "{response:?} vs {truth_text}: {s:?}");
                assert_eq!(s.method, Method::Numeric);
            }
        }
        let mut wrong = vec![
            format!("#### {}", n + 1),
            format!("The answer is {}.", n * 10),
            format!("The answer is {}.", n - 1),
            format!("Answer: {}", -n - 7),
            "I do not know.".to_string(),
        ];
        if n % 10 == 0 && n != 0 {
            // 100 vs 1000 style: a digit dropped.
            wrong.push(format!("Answer: {}", n / 10));
        }
        for response in &wrong {
            let s = score(response, solution);
            assert_eq!(s.score, 0, "{response:?} vs {truth_text}: {s:?}");
        }
        checked += 1;
    }
    assert_eq!(checked, items.len());
}

#[test]
fn math_reference_solutions_score_1_against_their_answers() {
    let items = rows("math_test.jsonl");
    let mut misses = Vec::new();
    for item in &items {
        let solution = item["chain_of_thought"].as_str().unwrap();
        let answer = item["answer"].as_str().unwrap();
        let s = score(solution, answer);
        if s.score != 1 {
            misses.push((answer.to_string(), s.extracted.clone()));
        }
    }
    // Solutions box their answers, sometimes written differently from the `answer` field
    // (`\$18.90` vs `18.90`, `\text{(A)}` vs `A`): nearly all must still match.
    let rate = 1.0 - misses.len() as f64 / items.len() as f64;
    assert!(
        rate >= 0.97,
        "{:.3} matched; first misses: {:?}",
        rate,
        &misses[..misses.len().min(20)]
    );
    // A MATH solution scored against the next problem's answer is wrong (when they differ).
    let mut wrong = 0;
    for pair in items.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if a["answer"] == b["answer"] {
            continue;
        }
        let s = score(
            a["chain_of_thought"].as_str().unwrap(),
            b["answer"].as_str().unwrap(),
        );
        wrong += s.score as usize;
    }
    assert!(
        wrong <= 5,
        "{wrong} solutions matched another problem's answer"
    );
}

#[test]
fn triviaqa_answers_match_through_their_aliases() {
    let items = rows("triviaqa_subset.jsonl");
    assert_eq!(items.len(), 300, "the tests' slice of TriviaQA");
    let mut alias_hits = 0;
    for (i, item) in items.iter().enumerate() {
        let answer = item["answer"].as_str().unwrap();
        let aliases = &item["aliases"];
        // Through the JSON input line, ground truth as an array.
        let line = json!({"response": format!("Let me recall.\nThe answer is {answer}."), "ground_truth": aliases});
        let s: Score = score_line(&line.to_string(), None);
        assert_eq!(s.score, 1, "{answer}: {s:?}");
        // Another alias, with an article and different case.
        let alias = aliases
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .find(|a| *a != answer)
            .unwrap_or(answer);
        let truths: Vec<String> = aliases
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        let s = score_aliases(
            &format!("Answer: the {}", alias.to_uppercase()),
            &truths,
            None,
        );
        if s.score == 1 {
            alias_hits += 1;
        }
        // The next item's answer is wrong unless this item lists it too.
        let other = items[(i + 1) % items.len()]["answer"].as_str().unwrap();
        let listed = truths.iter().any(|t| {
            let norm = |x: &str| webscale_rl_operators::reward::normalize_answer(x);
            norm(t) == norm(other)
        });
        if !listed {
            let s = score_aliases(&format!("The answer is {other}."), &truths, None);
            assert_eq!(s.score, 0, "{other} vs {answer}: {s:?}");
        }
    }
    // Uppercasing breaks only aliases whose case carries meaning in no way we normalize
    // (e.g. `ſ`); nearly all must match.
    assert!(alias_hits >= 295, "{alias_hits} of 300 aliases matched");
}

#[test]
fn units_percentages_and_fractions() {
    let cases = [
        ("The answer is 50%.", "50", 1),
        ("The answer is 50 percent", "50%", 1),
        // The sign makes the scale explicit (issue 17): 50% is also the fraction 0.5, but two
        // plain numbers never compare across a factor of 100.
        ("The answer is 0.5", "50%", 1),
        ("The answer is 0.5", "50", 0),
        ("Answer: 1/2", "0.5", 1),
        ("Answer: \\frac{1}{2}", "1/2", 1),
        ("Answer: 12 km", "12", 1),
        ("Answer: 12 kg", "12 kg", 1),
        ("Answer: 1,000", "1e3", 1),
        ("Answer: 100", "1000", 0),
        ("Answer: 1,000", "100", 0),
        ("Answer: 1/3", "0.333", 0),
        ("Answer: (1, 2)", "(1,2)", 1),
        ("Answer: 12", "(1,2)", 0),
    ];
    for (response, truth, expected) in cases {
        let s = score(response, truth);
        assert_eq!(s.score, expected, "{response:?} vs {truth:?}: {s:?}");
    }
}
