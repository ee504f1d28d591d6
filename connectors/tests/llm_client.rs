//! LLM client against the scripted OpenAI-compatible server
//! (`llm::scripted_server`, enabled for this crate's tests by the self
//! dev-dependency with feature `scripted-server`).

use std::collections::HashMap;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::runtime::Handle;
use webscale_rl_connectors::llm::scripted_server::{
    Reply, ScriptedServer, ScriptedServerConfig, ServerDialect, default_answer,
};
use webscale_rl_connectors::llm::{
    ChatRequest, ChatResponse, Fault, LlmClient, LlmConfig, LlmError, Price, ResponseSchema,
    StartupError, StructuredOutput,
};

/// Fast-failing settings for tests: small backoff, no API key.
fn config(endpoints: &[&ScriptedServer]) -> LlmConfig {
    LlmConfig {
        endpoints: endpoints.iter().map(|s| s.base_url()).collect(),
        api_key_env: String::new(),
        concurrency: 16,
        timeout_secs: 5,
        max_retries: 5,
        backoff_base_ms: 10,
        backoff_max_ms: 100,
        cooldown_secs_after_429: 1,
        ..LlmConfig::default()
    }
}

fn client(config: LlmConfig) -> LlmClient {
    LlmClient::new(config, Handle::current()).expect("client")
}

fn req(prompt: &str) -> ChatRequest {
    ChatRequest::new("test-model")
        .system("Answer in JSON.")
        .user(prompt)
        .temperature(0.0)
        .max_tokens(64)
}

/// The value the scripted server's default answer parses to for `r`.
fn expected_value(r: &ChatRequest) -> Value {
    let body = json!({"messages": r.messages});
    serde_json::from_str(&default_answer(&body)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_counts_usage_and_cost() {
    let server = ScriptedServer::start().await.unwrap();
    let mut cfg = config(&[&server]);
    cfg.prices.insert(
        "test-model".to_owned(),
        Price {
            prompt_per_million: 1000.0,
            completion_per_million: 2000.0,
            cached_prompt_per_million: None,
        },
    );
    let c = client(cfg);
    let r = req("What is the capital of France?");
    let resp = c.chat_json("qa_gen", r.clone()).await.unwrap();

    assert_eq!(resp.value, expected_value(&r));
    assert_eq!(resp.value["echo"], "What is the capital of France?");
    assert!(!resp.cached);
    assert_eq!(resp.attempts, 1);
    assert_eq!(resp.model, "test-model");
    assert_eq!(resp.endpoint.as_deref(), Some(server.base_url().as_str()));
    assert_eq!(resp.finish_reason.as_deref(), Some("stop"));
    // Server usage: characters / 4, rounded up.
    let prompt_chars = "Answer in JSON.\nWhat is the capital of France?"
        .chars()
        .count() as u64;
    assert_eq!(resp.usage.prompt_tokens, prompt_chars.div_ceil(4));
    assert_eq!(
        resp.usage.completion_tokens,
        (resp.content.chars().count() as u64).div_ceil(4)
    );

    let u = c.usage();
    let s = u.get("qa_gen", "test-model").unwrap();
    assert_eq!(
        (s.calls, s.successes, s.http_requests, s.retries),
        (1, 1, 1, 0)
    );
    assert_eq!(s.prompt_tokens, resp.usage.prompt_tokens);
    assert_eq!(s.completion_tokens, resp.usage.completion_tokens);
    let cost = (resp.usage.prompt_tokens as f64 * 1000.0
        + resp.usage.completion_tokens as f64 * 2000.0)
        / 1e6;
    assert!((s.cost - cost).abs() < 1e-12, "{} vs {cost}", s.cost);
    assert!(s.cost > 0.0);
    assert!(s.latency_ms_sum > 0.0);
    assert_eq!(u.total.calls, 1);
    assert_eq!(server.requests(), 1);

    // The request body is OpenAI-shaped.
    let log = server.log();
    assert_eq!(log[0].body["model"], "test-model");
    assert_eq!(log[0].body["messages"][1]["role"], "user");
    assert_eq!(log[0].body["temperature"], 0.0);
    assert_eq!(log[0].body["max_tokens"], 64);
    assert!(log[0].authorization.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_in_fences_is_parsed() {
    let server = ScriptedServer::start().await.unwrap();
    let c = client(config(&[&server]));
    server.push_reply(Reply::Fenced);
    let r = req("fenced please");
    let resp = c.chat_json("s", r.clone()).await.unwrap();
    assert!(resp.content.contains("```json"), "{}", resp.content);
    assert!(resp.content.starts_with("Sure"));
    assert_eq!(resp.value, expected_value(&r));

    server.push_reply(Reply::Content(
        "<think>{\"draft\": 1}</think>The answer: {\"a\": \"}\"} — done".to_owned(),
    ));
    let resp = c.chat_json("s", req("prose")).await.unwrap();
    assert_eq!(resp.value, json!({"a": "}"}));
    assert_eq!(resp.attempts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_honours_retry_after_and_pauses_everyone() {
    let server = ScriptedServer::start().await.unwrap();
    let mut cfg = config(&[&server]);
    cfg.cooldown_secs_after_429 = 30; // must not be used: Retry-After is given
    let c = client(cfg);
    server.on_prompt(
        "first",
        Reply::RateLimited {
            retry_after: Some("1".to_owned()),
        },
        1,
    );

    let t0 = Instant::now();
    let a = {
        let c = c.clone();
        tokio::spawn(async move { c.chat_json("s", req("first")).await })
    };
    // Wait until the client has seen the 429.
    while c.cooldown_remaining().is_zero() {
        assert!(t0.elapsed() < Duration::from_secs(5), "no 429 seen");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let remaining = c.cooldown_remaining();
    assert!(remaining <= Duration::from_secs(1), "{remaining:?}");
    let tb = Instant::now();
    let b = c.chat_json("s", req("second")).await.unwrap();
    assert_eq!(b.attempts, 1);
    // B waited for the global cool-down although its own call never failed.
    assert!(
        tb.elapsed() + Duration::from_millis(5) >= remaining,
        "{:?} < {remaining:?}",
        tb.elapsed()
    );
    let a = a.await.unwrap().unwrap();
    assert!(t0.elapsed() >= Duration::from_secs(1));
    assert_eq!(a.attempts, 2);

    // Server view: nothing arrived within Retry-After of the 429.
    let log = server.log();
    assert_eq!(log.len(), 3);
    assert_eq!(log[0].status, 429);
    for later in &log[1..] {
        assert_eq!(later.status, 200);
        assert!(
            later.received.duration_since(log[0].received) >= Duration::from_secs(1),
            "request {:?} after the 429",
            later.received.duration_since(log[0].received)
        );
    }
    let u = c.usage();
    let s = u.get("s", "test-model").unwrap();
    assert_eq!(s.errors["rate_limited"], 1);
    assert_eq!(s.retries, 1);
    assert_eq!(s.successes, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_without_retry_after_uses_configured_cooldown() {
    let server = ScriptedServer::start().await.unwrap();
    let c = client(config(&[&server])); // cooldown_secs_after_429 = 1
    server.push_reply(Reply::RateLimited { retry_after: None });
    let t0 = Instant::now();
    let r = c.chat_json("s", req("x")).await.unwrap();
    assert!(t0.elapsed() >= Duration::from_secs(1), "{:?}", t0.elapsed());
    assert_eq!(r.attempts, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_retried_without_limit() {
    let server = ScriptedServer::start().await.unwrap();
    let mut cfg = config(&[&server]);
    cfg.max_retries = 1; // not a limit for a fault of the LLM side
    let c = client(cfg);
    c.health().mark_up();
    server.on_prompt(
        "x",
        Reply::RateLimited {
            retry_after: Some("0".to_owned()),
        },
        5,
    );
    let r = c.chat_json("s", req("x")).await.unwrap();
    assert_eq!(r.attempts, 6);
    assert_eq!(server.requests(), 6);
    assert_eq!(c.usage().total.errors["rate_limited"], 5);
    assert!(c.usage().total.failures.is_empty());
    // Five 429s in a row were an outage (threshold 3), over with the answer.
    assert!(c.health().is_up());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_then_succeed() {
    let server = ScriptedServer::start().await.unwrap();
    let c = client(config(&[&server]));
    server.push_reply(Reply::Status(500, "boom".to_owned()));
    server.push_reply(Reply::Status(503, "overloaded".to_owned()));
    server.push_reply(Reply::InvalidBody);
    let r = req("retry me");
    let resp = c.chat_json("s", r.clone()).await.unwrap();
    assert_eq!(resp.value, expected_value(&r));
    assert_eq!(resp.attempts, 4);
    assert_eq!(server.requests(), 4);
    let u = c.usage();
    let s = u.get("s", "test-model").unwrap();
    assert_eq!(s.errors["server_error"], 3);
    assert_eq!(s.retries, 3);
    assert_eq!(s.http_requests, 4);
    assert_eq!(s.failed_calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_of_one_request_while_others_succeed_fail_it() {
    let server = ScriptedServer::start().await.unwrap();
    let mut cfg = config(&[&server]);
    cfg.max_retries = 2;
    let c = client(cfg);
    c.health().mark_up();
    server.on_prompt("poison", Reply::Status(502, "bad gateway".to_owned()), 1000);
    let poison = {
        let c = c.clone();
        tokio::spawn(async move { c.chat_json("s", req("poison")).await })
    };
    // Other documents keep being answered meanwhile.
    let mut others = 0;
    while !poison.is_finished() {
        c.chat_json("s", req(&format!("fine {others}")))
            .await
            .unwrap();
        others += 1;
        assert!(others < 10_000, "the poisoned request never gave up");
    }
    let e = poison.await.unwrap().unwrap_err();
    assert_eq!(e.kind(), "server_error");
    assert_eq!(e.fault(), Fault::Document);
    assert!(
        e.to_string()
            .contains("while the server answered other requests"),
        "{e}"
    );
    assert!(c.health().is_up());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_with_nothing_answered_are_an_outage_not_a_failure() {
    let server = ScriptedServer::start().await.unwrap();
    let mut cfg = config(&[&server]);
    cfg.max_retries = 1;
    cfg.outage_after_failures = 3;
    let c = client(cfg);
    c.health().mark_up();
    server.set_status_override(Some((503, "loading model")));
    let call = {
        let c = c.clone();
        tokio::spawn(async move { c.chat_json("s", req("x")).await })
    };
    let t0 = Instant::now();
    while c.health().is_up() {
        assert!(t0.elapsed() < Duration::from_secs(10), "no outage declared");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = c.health().status();
    assert!(status.describe().contains("loading model"), "{status:?}");
    assert!(
        c.health()
            .paused()
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    // Far past max_retries, the call is still waiting, not failed.
    while server.log().len() < 8 {
        assert!(t0.elapsed() < Duration::from_secs(20));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!call.is_finished());
    server.set_status_override(None);
    let r = call.await.unwrap().unwrap();
    assert!(r.attempts >= 8, "{}", r.attempts);
    assert!(c.health().is_up());
    assert!(c.usage().total.failures.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_are_retried() {
    let server = ScriptedServer::start().await.unwrap();
    let mut cfg = config(&[&server]);
    cfg.timeout_secs = 1;
    let c = client(cfg);
    server.push_reply(Reply::Hang(Duration::from_secs(3)));
    let t0 = Instant::now();
    let resp = c.chat_json("s", req("slow")).await.unwrap();
    let elapsed = t0.elapsed();
    assert!(elapsed >= Duration::from_secs(1), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert_eq!(resp.attempts, 2);
    assert_eq!(c.usage().total.errors["timeout"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_answer_is_retried_then_dead_lettered() {
    let server = ScriptedServer::start().await.unwrap();
    let mut cfg = config(&[&server]);
    cfg.max_malformed_retries = 2;
    let c = client(cfg);

    // Once malformed, then fine.
    server.push_reply(Reply::Malformed);
    let resp = c.chat_json("s", req("ok")).await.unwrap();
    assert_eq!(resp.attempts, 2);

    // Always malformed: 1 + 2 attempts, then malformed_answer.
    server.on_prompt("never json", Reply::Malformed, 100);
    let before = server.requests();
    let e = c.chat_json("s", req("never json")).await.unwrap_err();
    assert_eq!(e.kind(), "malformed_answer");
    assert_eq!(server.requests() - before, 3);
    match &e {
        LlmError::MalformedAnswer {
            content,
            finish_reason,
        } => {
            assert!(content.contains("cannot help"), "{content}");
            assert_eq!(finish_reason.as_deref(), Some("stop"));
        }
        other => panic!("{other:?}"),
    }
    let u = c.usage();
    let s = u.get("s", "test-model").unwrap();
    assert_eq!(s.errors["malformed_answer"], 4);
    assert_eq!(s.failures["malformed_answer"], 1);
    // Malformed answers still cost tokens.
    assert_eq!(s.http_requests, 5);
    let per_answer_prompt = ("Answer in JSON.\nnever json".len() as u64).div_ceil(4);
    assert!(s.prompt_tokens >= 3 * per_answer_prompt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_too_long_and_content_filter_are_the_documents_fault() {
    let server = ScriptedServer::start().await.unwrap();
    let c = client(config(&[&server]));
    server.push_reply(Reply::Status(
        400,
        "This model's maximum context length is 8192 tokens. However, you requested 9000 tokens"
            .to_owned(),
    ));
    let e = c.chat_json("s", req("long")).await.unwrap_err();
    assert_eq!(e.kind(), "context_too_long");
    assert_eq!(e.fault(), Fault::Document);
    server.push_reply(Reply::Status(
        400,
        r#"{"error": {"code": "content_filter", "message": "flagged"}}"#.to_owned(),
    ));
    let e = c.chat_json("s", req("rude")).await.unwrap_err();
    assert_eq!(e.kind(), "content_filter");
    assert_eq!(server.requests(), 2, "neither is retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_cut_by_the_token_limit_keeps_its_complete_fields() {
    let server = ScriptedServer::start().await.unwrap();
    let c = client(config(&[&server]));
    // What SmolLM2 under llama-cpp-python's grammar does: the verdict, then a
    // reason that runs to max_tokens.
    server.push_reply(Reply::Truncated(
        r#"{ "qualified": true, "reason" : "1.1.1.1.1.1.1.1.1.1.1.1.1"#.to_owned(),
    ));
    let r = c.chat_json("s", req("rambling")).await.unwrap();
    assert_eq!(r.value, json!({"qualified": true}));
    assert_eq!(r.finish_reason.as_deref(), Some("length"));
    assert_eq!(
        r.attempts, 1,
        "no retry: the same prompt would ramble again"
    );
    // Nothing complete before the cut: still malformed.
    server.on_prompt(
        "all reason",
        Reply::Truncated(r#"{"reason": "and so on and so"#.to_owned()),
        10,
    );
    let e = c.chat_json("s", req("all reason")).await.unwrap_err();
    assert_eq!(e.kind(), "malformed_answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_are_not_retried() {
    let server = ScriptedServer::start().await.unwrap();
    let c = client(config(&[&server]));
    server.push_reply(Reply::Status(422, "{\"error\": \"bad field\"}".to_owned()));
    let e = c.chat_json("s", req("x")).await.unwrap_err();
    assert_eq!(e.kind(), "client_error");
    assert!(matches!(e, LlmError::ClientError { status: 422, .. }));
    assert_eq!(server.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_down_and_back_loses_no_call() {
    let server = ScriptedServer::start().await.unwrap();
    let port = server.addr().port();
    let cfg = LlmConfig {
        // Credentials in the URL must never show.
        endpoints: vec![format!("http://user:secretpw@127.0.0.1:{port}/v1")],
        api_key_env: String::new(),
        max_retries: 1,
        backoff_base_ms: 5,
        backoff_max_ms: 50,
        ..LlmConfig::default()
    };
    let c = client(cfg);
    c.health().mark_up();
    let srv = std::sync::Arc::new(server);
    {
        let srv = srv.clone();
        tokio::task::spawn_blocking(move || srv.go_down())
            .await
            .unwrap();
    }
    let call = {
        let c = c.clone();
        tokio::spawn(async move { c.chat_json("s", req("x")).await })
    };
    let t0 = Instant::now();
    while c.health().is_up() {
        assert!(t0.elapsed() < Duration::from_secs(10), "no outage declared");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let line = c.health().status().describe();
    assert!(line.contains(&format!("127.0.0.1:{port}")), "{line}");
    assert!(!line.contains("secretpw"), "{line}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !call.is_finished(),
        "a connection failure must not end the call"
    );
    srv.come_up().unwrap();
    let r = call.await.unwrap().unwrap();
    assert!(r.attempts > 2);
    assert!(c.health().is_up());
    let u = c.usage();
    assert!(u.total.errors["connection"] >= 3);
    assert!(u.total.failures.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_format_sent_and_fallback_when_unsupported() {
    let schema = ResponseSchema::new(
        "qa",
        json!({"type": "object", "properties": {"echo": {"type": "string"}}}),
    );

    // Supported: response_format is sent.
    let server = ScriptedServer::start().await.unwrap();
    let c = client(config(&[&server]));
    c.chat_json("s", req("a").schema(schema.clone()))
        .await
        .unwrap();
    let log = server.log();
    assert!(log[0].has_response_format);
    assert_eq!(log[0].body["response_format"]["type"], "json_schema");
    assert_eq!(
        log[0].body["response_format"]["json_schema"]["schema"]["properties"]["echo"]["type"],
        "string"
    );

    // Unsupported: a 400 naming response_format, then the next dialects.
    let server = ScriptedServer::start_with(ScriptedServerConfig {
        dialect: ServerDialect::Plain,
        ..ScriptedServerConfig::default()
    })
    .await
    .unwrap();
    let c = client(config(&[&server]));
    let r = req("b").schema(schema.clone());
    let resp = c.chat_json("s", r.clone()).await.unwrap();
    assert_eq!(resp.value, expected_value(&r));
    // json_schema refused, json_object refused, guided_json (a body field
    // this server ignores) answered.
    assert_eq!(resp.attempts, 3);
    assert_eq!(c.endpoint_stats()[0].dialect, StructuredOutput::GuidedJson);
    c.chat_json("s", req("c").schema(schema)).await.unwrap();
    let log = server.log();
    let flags: Vec<(bool, u16)> = log
        .iter()
        .map(|l| (l.has_response_format, l.status))
        .collect();
    assert_eq!(
        flags,
        vec![(true, 400), (true, 400), (false, 200), (false, 200)]
    );
    assert!(log[3].body.get("guided_json").is_some());

    // structured_output = "none": never sent.
    let server = ScriptedServer::start().await.unwrap();
    let mut cfg = config(&[&server]);
    cfg.structured_output = StructuredOutput::None;
    let c = client(cfg);
    c.chat_json("s", req("d").schema(ResponseSchema::new("qa", json!({}))))
        .await
        .unwrap();
    assert!(!server.log()[0].has_response_format);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_never_exceeds_the_cap() {
    let server = ScriptedServer::start_with(ScriptedServerConfig {
        latency: Duration::from_millis(40),
        ..ScriptedServerConfig::default()
    })
    .await
    .unwrap();
    let mut cfg = config(&[&server]);
    cfg.concurrency = 8;
    let c = client(cfg);
    let (tx, rx) = mpsc::channel();
    for i in 0..120 {
        let tx = tx.clone();
        c.submit("s", req(&format!("q{i}")), move |r| {
            tx.send((i, r)).unwrap();
        });
    }
    drop(tx);
    let results: Vec<(usize, Result<ChatResponse, LlmError>)> =
        tokio::task::spawn_blocking(move || rx.iter().collect())
            .await
            .unwrap();
    assert_eq!(results.len(), 120);
    for (i, r) in results {
        assert_eq!(r.unwrap().value["echo"], format!("q{i}"));
    }
    assert_eq!(server.requests(), 120);
    assert_eq!(server.max_in_flight(), 8, "cap reached but never exceeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_endpoints_both_get_traffic() {
    let cfg_server = || ScriptedServerConfig {
        latency: Duration::from_millis(10),
        ..ScriptedServerConfig::default()
    };
    let s1 = ScriptedServer::start_with(cfg_server()).await.unwrap();
    let s2 = ScriptedServer::start_with(cfg_server()).await.unwrap();
    let c = client(config(&[&s1, &s2]));
    let calls: Vec<_> = (0..60)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move { c.chat_json("s", req(&format!("q{i}"))).await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    let (n1, n2) = (s1.requests(), s2.requests());
    assert_eq!(n1 + n2, 60);
    assert!(n1 >= 15 && n2 >= 15, "unbalanced: {n1} / {n2}");
    let stats = c.endpoint_stats();
    assert_eq!(stats[0].requests + stats[1].requests, 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_endpoint_is_avoided() {
    let good = ScriptedServer::start().await.unwrap();
    let bad = ScriptedServer::start().await.unwrap();
    for _ in 0..100 {
        bad.push_reply(Reply::Status(500, "down".to_owned()));
    }
    let mut cfg = config(&[&bad, &good]);
    cfg.backoff_base_ms = 1000; // endpoint cool-down after a failure: up to 1 s
    cfg.backoff_max_ms = 1000;
    let c = client(cfg);
    for i in 0..20 {
        c.chat_json("s", req(&format!("q{i}"))).await.unwrap();
    }
    // The bad endpoint failed and was then skipped while cooling down (up to
    // 1 s after each failure); round-robin alone would have sent it ~10.
    assert!(bad.requests() <= 4, "bad endpoint got {}", bad.requests());
    assert!(good.requests() >= 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_avoids_repeat_calls_and_survives_reopen() {
    let server = ScriptedServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&[&server]);
    cfg.cache_path = Some(dir.path().join("llm-cache.redb"));
    cfg.prices.insert(
        "test-model".to_owned(),
        Price {
            prompt_per_million: 1.0,
            completion_per_million: 1.0,
            cached_prompt_per_million: None,
        },
    );

    let r = req("cache me");
    let first = {
        let c = client(cfg.clone());
        let first = c.chat_json("s", r.clone()).await.unwrap();
        assert!(!first.cached);
        assert_eq!(server.requests(), 1);
        let second = c.chat_json("s", r.clone()).await.unwrap();
        assert!(second.cached);
        assert_eq!(second.attempts, 0);
        assert_eq!(second.endpoint, None);
        assert_eq!(second.value, first.value);
        assert_eq!(second.content, first.content);
        assert_eq!(second.usage, first.usage);
        assert_eq!(server.requests(), 1, "a cache hit makes no HTTP request");
        let u = c.usage();
        let s = u.get("s", "test-model").unwrap();
        assert_eq!((s.calls, s.cache_hits, s.http_requests), (2, 1, 1));
        // Tokens (and cost) are counted once.
        assert_eq!(s.prompt_tokens, first.usage.prompt_tokens);

        // Another temperature is another request.
        c.chat_json("s", r.clone().temperature(0.5)).await.unwrap();
        assert_eq!(server.requests(), 2);
        // Malformed answers are not cached.
        server.on_prompt("bad", Reply::Malformed, 100);
        let mut cfg1 = cfg.clone();
        cfg1.max_malformed_retries = 0;
        drop(c);
        let c = client(cfg1);
        assert!(c.chat_json("s", req("bad")).await.is_err());
        assert!(c.chat_json("s", req("bad")).await.is_err());
        assert_eq!(server.requests(), 4);
        first
        // Dropping the client commits the cache and closes the file.
    };

    let c = client(cfg);
    let again = c.chat_json("s", r).await.unwrap();
    assert!(again.cached);
    assert_eq!(again.value, first.value);
    assert_eq!(server.requests(), 4, "reopened cache answers without HTTP");
    assert_eq!(c.usage().total.cache_hits, 1);
    c.flush_cache().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_is_sent_as_bearer_and_never_shown() {
    // The key comes from the environment; PATH is set in every test process
    // (no set_var, which is unsound while other test threads run).
    let key = std::env::var("PATH")
        .expect("PATH is set")
        .trim()
        .to_owned();
    assert!(key.len() >= 8);
    let server = ScriptedServer::start().await.unwrap();
    let mut cfg = config(&[&server]);
    cfg.api_key_env = "PATH".to_owned();
    let c = client(cfg);
    c.chat_json("s", req("hello")).await.unwrap();
    assert_eq!(
        server.log()[0].authorization.as_deref(),
        Some(format!("Bearer {key}").as_str())
    );

    // A server echoing the key (whole or truncated) in its error: at
    // start-up a refused key stops the engine with a clear message.
    let truncated: String = key.chars().take(12).collect();
    let refusal = format!("Incorrect API key provided: {key}. Also seen as {truncated}****.");
    server.set_status_override(Some((401, refusal.as_str())));
    let e = match c.startup_check(&[]).await {
        Err(StartupError::Fatal(m)) => m,
        other => panic!("a refused key stops the start: {other:?}"),
    };
    assert!(e.contains("401") && e.contains("$PATH"), "{e}");
    for shown in [e.to_string(), format!("{e:?}"), format!("{c:?}")] {
        assert!(!shown.contains(&key), "key leaked: {shown}");
        assert!(!shown.contains(&truncated), "key prefix leaked: {shown}");
    }
    assert!(
        e.to_string()
            .contains("Incorrect API key provided: [redacted]"),
        "{e}"
    );
    server.set_status_override(None);

    // While running, a 401 (a key rotated under us) is retried, not failed.
    server.push_reply(Reply::Status(401, refusal.clone()));
    assert_eq!(c.chat_json("s", req("rotated")).await.unwrap().attempts, 2);

    // No key configured: no Authorization header.
    let mut cfg = config(&[&server]);
    cfg.api_key_env = "WEBSCALE_RL_TEST_SURELY_UNSET_VARIABLE".to_owned();
    let c = client(cfg);
    c.chat_json("s", req("anonymous")).await.unwrap();
    assert_eq!(server.log().last().unwrap().authorization, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_per_minute_limit_paces_calls() {
    let server = ScriptedServer::start().await.unwrap();
    let mut cfg = config(&[&server]);
    cfg.requests_per_minute = Some(600); // 10/s, burst 10
    let c = client(cfg);
    let t0 = Instant::now();
    let calls: Vec<_> = (0..15)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move { c.chat_json("s", req(&format!("q{i}"))).await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    // 10 at once, then 5 more at 10/s.
    assert!(
        t0.elapsed() >= Duration::from_millis(450),
        "{:?}",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_per_minute_limit_paces_calls() {
    let server = ScriptedServer::start().await.unwrap();
    let mut cfg = config(&[&server]);
    cfg.tokens_per_minute = Some(60 * 400); // 400 tokens/s, burst 400
    let c = client(cfg);
    let long = "x".repeat(400);
    let t0 = Instant::now();
    for i in 0..4 {
        c.chat_json("s", req(&format!("{long}{i}"))).await.unwrap();
    }
    // Estimated 104 prompt tokens per call: 4 calls would fit the burst. The
    // server reports ~105 prompt + ~110 completion tokens per call, and the
    // correction after each call makes the later ones wait: about
    // (3 × 215 + 104 − 400) / 400 s ≈ 0.87 s.
    let elapsed = t0.elapsed();
    assert!(elapsed >= Duration::from_millis(600), "{elapsed:?}");
    let u = c.usage();
    assert!(u.total.prompt_tokens + u.total.completion_tokens > 800);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_cancels_waiting_and_later_calls() {
    let server = ScriptedServer::start_with(ScriptedServerConfig {
        latency: Duration::from_millis(300),
        ..ScriptedServerConfig::default()
    })
    .await
    .unwrap();
    let mut cfg = config(&[&server]);
    cfg.concurrency = 1;
    let c = client(cfg);
    let first = {
        let c = c.clone();
        tokio::spawn(async move { c.chat_json("s", req("in flight")).await })
    };
    while server.requests() == 0 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let waiting = {
        let c = c.clone();
        tokio::spawn(async move { c.chat_json("s", req("waiting")).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    c.close();
    assert!(first.await.unwrap().is_ok(), "request on the wire finishes");
    assert_eq!(waiting.await.unwrap().unwrap_err().kind(), "cancelled");
    assert_eq!(
        c.chat_json("s", req("later")).await.unwrap_err().kind(),
        "cancelled"
    );
    assert_eq!(server.requests(), 1);
}

#[test]
fn submit_from_a_plain_thread_wakes_the_callback() {
    // Like a timely worker: no runtime on this thread, only a handle.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = rt.block_on(ScriptedServer::start()).unwrap();
    let c = LlmClient::new(
        LlmConfig {
            endpoints: vec![server.base_url()],
            api_key_env: String::new(),
            ..LlmConfig::default()
        },
        rt.handle().clone(),
    )
    .unwrap();
    let (tx, rx) = mpsc::channel();
    let mut expected = HashMap::new();
    for i in 0..10 {
        let r = req(&format!("worker {i}"));
        expected.insert(i, expected_value(&r));
        let tx = tx.clone();
        c.submit("s", r, move |res| tx.send((i, res)).unwrap());
    }
    drop(tx);
    let mut n = 0;
    while let Ok((i, res)) = rx.recv_timeout(Duration::from_secs(10)) {
        assert_eq!(res.unwrap().value, expected[&i]);
        n += 1;
    }
    assert_eq!(n, 10);
    assert_eq!(server.requests(), 10);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_fail_without_http() {
    let server = ScriptedServer::start().await.unwrap();
    let c = client(config(&[&server]));
    let e = c
        .chat_json("s", ChatRequest::new("").user("no model"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "invalid_request");
    let e = c
        .chat_json("s", req("x").param("stream", json!(true)))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "invalid_request");
    assert_eq!(server.requests(), 0);

    // The configured default model fills an empty one.
    let mut cfg = config(&[&server]);
    cfg.model = Some("default-model".to_owned());
    let c = client(cfg);
    let resp = c
        .chat_json("s", ChatRequest::new("").user("hi"))
        .await
        .unwrap();
    assert_eq!(resp.model, "default-model");
    assert!(c.usage().get("s", "default-model").is_some());
}

fn fatal<T: std::fmt::Debug>(r: Result<T, StartupError>) -> String {
    match r {
        Err(StartupError::Fatal(m)) => m,
        other => panic!("expected a fatal start-up error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_resolves_the_model_from_the_server() {
    let with_models = |models: Option<Vec<&str>>| ScriptedServerConfig {
        models: models.map(|m| m.into_iter().map(str::to_owned).collect()),
        ..ScriptedServerConfig::default()
    };
    let unnamed = |server: &ScriptedServer| {
        let mut cfg = config(&[server]);
        cfg.model = None;
        client(cfg)
    };
    // One model listed, none named: that one, printed as such.
    let one = ScriptedServer::start_with(with_models(Some(vec!["qwen-7b"])))
        .await
        .unwrap();
    let c = unnamed(&one);
    let report = c.startup_check(&[]).await.unwrap();
    assert_eq!(report.model, "qwen-7b");
    assert!(report.model_from_server);
    assert!(report.lines()[0].contains("the one model the server lists"));
    assert_eq!(c.default_model().as_deref(), Some("qwen-7b"));
    assert!(c.health().is_up());
    // Requests without a model now name it.
    c.chat_json("s", ChatRequest::new("").user("hi"))
        .await
        .unwrap();
    assert_eq!(one.log()[0].body["model"], "qwen-7b");

    // Two listed, none named: stop, listing them.
    let two = ScriptedServer::start_with(with_models(Some(vec!["a", "b"])))
        .await
        .unwrap();
    let m = fatal(unnamed(&two).startup_check(&[]).await);
    assert!(m.contains("a, b") && m.contains("--llm-model"), "{m}");
    // Zero listed.
    let zero = ScriptedServer::start_with(with_models(Some(vec![])))
        .await
        .unwrap();
    let m = fatal(unnamed(&zero).startup_check(&[]).await);
    assert!(m.contains("lists no model"), "{m}");
    // No /models route and no model named.
    let unlisted = ScriptedServer::start_with(with_models(None)).await.unwrap();
    let m = fatal(unnamed(&unlisted).startup_check(&[]).await);
    assert!(m.contains("--llm-model"), "{m}");

    // A named model the server does not serve; then a stage's model.
    let mut cfg = config(&[&two]);
    cfg.model = Some("c".into());
    let m = fatal(client(cfg).startup_check(&[]).await);
    assert!(
        m.contains("'c' is not served") && m.contains("it serves: a, b"),
        "{m}"
    );
    let mut cfg = config(&[&two]);
    cfg.model = Some("a".into());
    let m = fatal(
        client(cfg)
            .startup_check(&[("[generate] model".into(), "big".into())])
            .await,
    );
    assert!(m.contains("[generate] model = 'big'"), "{m}");
    // No probe request reached the pipeline's count.
    assert_eq!(two.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_probes_each_servers_dialect() {
    let schema = ResponseSchema::new(
        "qa",
        json!({"type": "object", "properties": {"echo": {"type": "string"}}}),
    );
    for (dialect, expected) in [
        (ServerDialect::OpenAi, StructuredOutput::JsonSchema),
        (ServerDialect::LlamaCppPython, StructuredOutput::JsonObject),
        (ServerDialect::Plain, StructuredOutput::GuidedJson),
    ] {
        let server = ScriptedServer::start_with(ScriptedServerConfig {
            dialect,
            models: Some(vec!["test-model".into()]),
            ..ScriptedServerConfig::default()
        })
        .await
        .unwrap();
        let c = client(config(&[&server]));
        let report = c.startup_check(&[]).await.unwrap();
        assert_eq!(report.endpoints[0].dialect, expected, "{dialect:?}");
        assert!(report.endpoints[0].probed);
        assert_eq!(c.endpoint_stats()[0].dialect, expected);
        // Pipeline calls then go out in that dialect, first time right.
        let r = c
            .chat_json("s", req("go").schema(schema.clone()))
            .await
            .unwrap();
        assert_eq!(r.attempts, 1, "{dialect:?}");
        assert_eq!(r.value["echo"], "go");
        assert!(server.probes() >= 1);
        assert_eq!(server.requests(), 1);
    }

    // llama-cpp-python without its grammar answers prose: every document
    // would be malformed_answer, which is what the probe avoids.
    let server = ScriptedServer::start_with(ScriptedServerConfig {
        dialect: ServerDialect::LlamaCppPython,
        models: Some(vec!["test-model".into()]),
        ..ScriptedServerConfig::default()
    })
    .await
    .unwrap();
    let mut cfg = config(&[&server]);
    cfg.structured_output = StructuredOutput::None;
    let c = client(cfg);
    let report = c.startup_check(&[]).await.unwrap();
    assert!(!report.endpoints[0].probed);
    let e = c
        .chat_json("s", req("go").schema(schema))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "malformed_answer");
    assert_eq!(server.probes(), 0, "a forced dialect is not probed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_waits_for_an_unreachable_server() {
    let server = std::sync::Arc::new(ScriptedServer::start().await.unwrap());
    {
        let s = server.clone();
        tokio::task::spawn_blocking(move || s.go_down())
            .await
            .unwrap();
    }
    let mut cfg = config(&[&server]);
    cfg.model = Some("scripted".into());
    let c = client(cfg);
    match c.startup_check(&[]).await {
        Err(StartupError::Unreachable(m)) => {
            assert!(
                m.contains(&server.base_url()) && m.contains("not reachable"),
                "{m}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(!c.health().is_up());
    assert!(c.health().status().describe().contains("not reachable"));
    // A 503 while the model loads is the same: wait.
    server.come_up().unwrap();
    server.set_status_override(Some((503, "model is loading")));
    assert!(matches!(
        c.startup_check(&[]).await,
        Err(StartupError::Unreachable(_))
    ));
    server.set_status_override(None);
    let report = c.startup_check(&[]).await.unwrap();
    assert_eq!(report.model, "scripted");
    assert!(c.health().is_up());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_prompt_tokens_are_counted_and_priced() {
    let server = ScriptedServer::start_with(ScriptedServerConfig {
        cached_prompt_fraction: 0.5,
        ..ScriptedServerConfig::default()
    })
    .await
    .unwrap();
    let mut cfg = config(&[&server]);
    cfg.prices.insert(
        "test-model".to_owned(),
        Price {
            prompt_per_million: 1000.0,
            completion_per_million: 0.0,
            cached_prompt_per_million: Some(100.0),
        },
    );
    let c = client(cfg);
    let r = c
        .chat_json("s", req("a prompt long enough to have tokens"))
        .await
        .unwrap();
    let (prompt, cached) = (r.usage.prompt_tokens, r.usage.cached_prompt_tokens);
    assert_eq!(cached, prompt / 2, "{:?}", r.usage);
    assert!(cached > 0);
    let s = c.usage().get("s", "test-model").unwrap().clone();
    assert_eq!((s.prompt_tokens, s.cached_prompt_tokens), (prompt, cached));
    let want = ((prompt - cached) as f64 * 1000.0 + cached as f64 * 100.0) / 1e6;
    assert!((s.cost - want).abs() < 1e-12, "{} vs {want}", s.cost);
}

/// A 429 whose `Retry-After` asks for years is cut to `llm.max_retry_after_secs`, not an hour
/// of silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_retry_after_is_capped() {
    let server = ScriptedServer::start().await.unwrap();
    let mut cfg = config(&[&server]);
    cfg.max_retry_after_secs = 1;
    let c = client(cfg);
    server.push_reply(Reply::RateLimited {
        retry_after: Some("999999999".to_owned()),
    });
    let t0 = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(10), c.chat_json("s", req("x")))
        .await
        .expect("answered after the capped wait, not after 999999999 s")
        .unwrap();
    assert_eq!(r.attempts, 2);
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
}

/// An answer body past `llm.max_response_bytes` is refused while it is read (a 3 GiB answer
/// once took 6 GB of memory and was retried forever): a document fault, ended at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_answer_is_refused_before_it_is_held() {
    let server = ScriptedServer::start().await.unwrap();
    let mut cfg = config(&[&server]);
    cfg.max_response_bytes = 64 * 1024;
    let c = client(cfg);
    server.push_reply(Reply::Content(format!(
        "{{\"a\": \"{}\"}}",
        "x".repeat(200 * 1024)
    )));
    let e = c.chat_json("s", req("big")).await.unwrap_err();
    assert_eq!(e.kind(), "malformed_answer");
    assert!(e.to_string().contains("max_response_bytes"), "{e}");
    assert_eq!(server.requests(), 1, "refused, not retried");
    // The next, normal answer is read as always.
    c.chat_json("s", req("small")).await.unwrap();
}

/// The same document fault on `document_faults_before_outage` calls in a row is a fault of the
/// configuration or the server: the outage detector pauses the input and the calls wait for an
/// answer instead of being dead-lettered, one after another, with exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_document_fault_on_calls_in_a_row_is_an_outage() {
    let server = ScriptedServer::start().await.unwrap();
    let mut cfg = config(&[&server]);
    cfg.document_faults_before_outage = 3;
    cfg.outage_after_failures = 1;
    let c = client(cfg);
    c.health().mark_up();
    for _ in 0..6 {
        server.push_reply(Reply::Status(
            400,
            r#"{"error": {"message": "temperature must be at most 2"}}"#.to_owned(),
        ));
    }
    // The first two are the documents' own faults, as far as anyone can tell.
    for i in 0..2 {
        let e = c
            .chat_json("s", req(&format!("doc {i}")))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), "client_error");
        assert_eq!(e.fault(), Fault::Document);
    }
    assert!(c.health().is_up());
    // The third makes it a pattern: retried (the 4 refusals left, then the answer), and the LLM
    // side is down meanwhile.
    let third = {
        let c = c.clone();
        tokio::spawn(async move { c.chat_json("s", req("doc 2")).await })
    };
    let t0 = Instant::now();
    while c.health().is_up() {
        assert!(t0.elapsed() < Duration::from_secs(5), "no outage declared");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let why = c.health().status().describe();
    assert!(why.contains("document_faults_before_outage"), "{why}");
    let r = third
        .await
        .unwrap()
        .expect("answered once the server is well");
    assert!(r.attempts >= 5, "{}", r.attempts);
    assert!(c.health().is_up(), "an answer ends the outage");
    // The streak is over: a single 400 is the document's again.
    server.push_reply(Reply::Status(400, "{}".to_owned()));
    assert_eq!(
        c.chat_json("s", req("doc 3")).await.unwrap_err().fault(),
        Fault::Document
    );
}

/// The response cache answers only for the model it stored answers of: a second server serving
/// another model under the same name (vLLM's `--served-model-name`, another quantization) is
/// asked, not answered from the first one's cache (it once was, 20 of 20). A server that reports
/// the same model shares the answers, and the start-up report says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_answers_only_for_the_model_that_wrote_it() {
    let dir = tempfile::tempdir().unwrap();
    let serving = |root: &str, answer: &'static str| ScriptedServerConfig {
        model_card: Some(json!({"root": root, "max_model_len": 4096})),
        answer: Some(std::sync::Arc::new(move |_: &Value| {
            format!("{{\"from\": \"{answer}\"}}")
        })),
        ..ScriptedServerConfig::default()
    };
    let run = |server: &ScriptedServer| {
        let mut cfg = config(&[server]);
        cfg.cache_path = Some(dir.path().join("cache.redb"));
        cfg
    };
    let ask = ChatRequest::new("scripted")
        .user("the same question")
        .max_tokens(16);
    let q4 = ScriptedServer::start_with(serving("/models/qwen-q4", "q4"))
        .await
        .unwrap();
    {
        let c = client(run(&q4));
        let report = c.startup_check(&[]).await.unwrap();
        assert!(report.cache_shared_with.is_empty());
        assert_eq!(
            c.chat_json("s", ask.clone()).await.unwrap().value["from"],
            "q4"
        );
        c.flush_cache().unwrap();
    }
    // Another quantization under the same name: asked, and its own answer.
    let q8 = ScriptedServer::start_with(serving("/models/qwen-q8", "q8"))
        .await
        .unwrap();
    {
        let c = client(run(&q8));
        c.startup_check(&[]).await.unwrap();
        let r = c.chat_json("s", ask.clone()).await.unwrap();
        assert!(!r.cached, "answered from another model's cache");
        assert_eq!(r.value["from"], "q8");
        assert_eq!(q8.requests(), 1);
        c.flush_cache().unwrap();
    }
    // The same model on another endpoint: answered from the cache, and the start-up says so.
    let q4_again = ScriptedServer::start_with(serving("/models/qwen-q4", "other"))
        .await
        .unwrap();
    let c = client(run(&q4_again));
    let report = c.startup_check(&[]).await.unwrap();
    assert_eq!(report.cache_shared_with, vec![q4.base_url()]);
    assert!(report.lines().iter().any(|l| l.contains("answer here too")));
    let r = c.chat_json("s", ask.clone()).await.unwrap();
    assert!(r.cached);
    assert_eq!(r.value["from"], "q4");
    assert_eq!(q4_again.requests(), 0);
    // A namespace of the user's own keeps them apart, whatever the servers report.
    drop(c);
    let mut cfg = run(&q4_again);
    cfg.cache_namespace = Some("experiment-2".into());
    let c = client(cfg);
    c.startup_check(&[]).await.unwrap();
    assert!(!c.chat_json("s", ask).await.unwrap().cached);
}
