//! Shared helpers: a mock Kafka cluster with the engine's topics, raw producing, reading topics
//! back, and the shared sample.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{Value, json};
use webscale_rl_connectors::kafka::{KafkaConfig, tools};

pub const SAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/web/sample.jsonl");
pub const BIN: &str = env!("CARGO_BIN_EXE_webscale-rl");

pub fn sample_lines() -> Vec<Vec<u8>> {
    std::fs::read(SAMPLE)
        .expect("the tests' sample at tests/data/web/sample.jsonl")
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

pub struct Kafka {
    pub cluster: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    pub cfg: KafkaConfig,
}

impl Kafka {
    /// A mock cluster with the input (`partitions` partitions), output and dead-letter topics.
    pub fn start(partitions: i32, group: &str) -> Kafka {
        let cluster = MockCluster::new(1).expect("mock cluster");
        let cfg = KafkaConfig {
            brokers: cluster.bootstrap_servers(),
            group: group.to_string(),
            connect_timeout_secs: 5,
            ..Default::default()
        };
        cluster
            .create_topic(&cfg.input_topic, partitions, 1)
            .unwrap();
        cluster.create_topic(&cfg.output_topic, 2, 1).unwrap();
        cluster.create_topic(&cfg.dead_letter_topic, 2, 1).unwrap();
        let kafka = Kafka { cluster, cfg };
        kafka.state_topics(group);
        kafka
    }

    /// The state's changelog topics of `group` at the default partition count (the mock
    /// cluster does not implement CreateTopics, which the engine would use).
    pub fn state_topics(&self, group: &str) {
        for index in ["exact_dedup", "near_dedup", "llm_cache"] {
            let topic = webscale_rl_connectors::kafka::changelog::changelog_topic(group, index);
            // Created once; a second call for the group finds them.
            let _ = self.cluster.create_topic(&topic, 32, 1);
        }
    }

    /// Produces messages as given: `None` payloads are empty messages.
    pub fn produce_raw(&self, messages: &[(Option<&str>, Option<Vec<u8>>)]) {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.cfg.brokers)
            .set("message.max.bytes", "16777216")
            .create()
            .unwrap();
        for (key, payload) in messages {
            let mut r = BaseRecord::<str, [u8]>::to(&self.cfg.input_topic);
            if let Some(k) = key {
                r = r.key(k);
            }
            if let Some(p) = payload {
                r = r.payload(p);
            }
            producer.send(r).map_err(|(e, _)| e).unwrap();
            producer.poll(Duration::ZERO);
        }
        producer.flush(Duration::from_secs(30)).unwrap();
    }

    pub fn produce_lines(&self, lines: Vec<Vec<u8>>) -> u64 {
        tools::produce_lines(&self.cfg, &self.cfg.input_topic, lines).unwrap()
    }

    /// Every message of `topic` as JSON.
    pub fn read(&self, topic: &str) -> Vec<Value> {
        let mut buf = Vec::new();
        tools::tail(&self.cfg, topic, None, Duration::from_millis(300), &mut buf).unwrap();
        String::from_utf8(buf)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).expect("records are JSON"))
            .collect()
    }

    pub fn outputs(&self) -> Vec<Value> {
        self.read(&self.cfg.output_topic)
    }

    pub fn dead_letters(&self) -> Vec<Value> {
        self.read(&self.cfg.dead_letter_topic)
    }

    /// The group's committed offset per input partition.
    pub fn committed(&self) -> BTreeMap<i32, i64> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.cfg.brokers)
            .set("group.id", &self.cfg.group)
            .create()
            .unwrap();
        let meta = consumer
            .fetch_metadata(Some(&self.cfg.input_topic), Duration::from_secs(5))
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in meta.topics()[0].partitions() {
            tpl.add_partition(&self.cfg.input_topic, p.id());
        }
        let committed = consumer
            .committed_offsets(tpl, Duration::from_secs(5))
            .unwrap();
        committed
            .elements()
            .iter()
            .map(|e| {
                let o = match e.offset() {
                    Offset::Offset(o) => o,
                    _ => 0,
                };
                (e.partition(), o)
            })
            .collect()
    }

    /// The end offset per input partition.
    pub fn end_offsets(&self) -> BTreeMap<i32, i64> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.cfg.brokers)
            .create()
            .unwrap();
        let meta = consumer
            .fetch_metadata(Some(&self.cfg.input_topic), Duration::from_secs(5))
            .unwrap();
        meta.topics()[0]
            .partitions()
            .iter()
            .map(|p| {
                let (_, high) = consumer
                    .fetch_watermarks(&self.cfg.input_topic, p.id(), Duration::from_secs(5))
                    .unwrap();
                (p.id(), high)
            })
            .collect()
    }
}

/// The (topic, partition, offset) a record accounts for: outputs carry no origin, so they are
/// matched by document id; dead letters carry their origin.
pub fn ids(records: &[Value]) -> std::collections::BTreeSet<String> {
    records
        .iter()
        .map(|r| {
            r["id"]
                .as_str()
                .expect("every record has an id")
                .to_string()
        })
        .collect()
}

/// A GSM8K test question (item 0), lightly reworded: what a contaminated pair looks like.
pub const JANET: &str = "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for her friends every day with four. She sells the remainder at the farmers' market daily for $2 per fresh duck egg. How much in dollars does she make every day?";

/// The scripted LLM server's answers: a cooperative model, except where a marker in the document
/// steers it: `[[boilerplate]]` fails the LLM filter, `[[offlist]]` gets an off-list domain,
/// `[[social]]` is Social Science (else Natural Science), `[[leak]]` puts the answer in the
/// question, `[[gsm8k-qa]]` copies a GSM8K question, `[[wrong]]` fails verification.
pub fn oracle(body: &Value) -> String {
    let prompt = body["messages"][0]["content"].as_str().unwrap_or_default();
    // Every prompt starts with the shared document head; the task after it names the stage.
    let domain = if prompt.contains("[[offlist]]") {
        "Sports"
    } else if prompt.contains("[[social]]") {
        "Social Science"
    } else {
        "Natural Science"
    };
    let pair = |persona: &str| {
        if prompt.contains("[[gsm8k-qa]]") {
            // A benchmark question verbatim: decontamination must drop the pair.
            json!({"persona": persona, "reason": "r", "question": JANET, "answer": "18"})
        } else if prompt.contains("[[leak]]") {
            json!({"persona": persona, "reason": "r", "question": "Is the answer Mars, the red planet?", "answer": "Mars"})
        } else {
            let who = persona
                .trim_start_matches("a ")
                .trim_start_matches("curious ")
                .trim_start_matches("science ");
            json!({"persona": persona, "reason": "r", "question": format!("Which planet did the {who} in the 1969 survey name first?"), "answer": "Jupiter"})
        }
    };
    let answer = if prompt.contains("Task: screen the document above for the dataset, and label it")
    {
        // `[classify] with_filter`: the filter's verdict and the labels in one answer.
        json!({"reason": "facts", "qualified": !prompt.contains("[[boilerplate]]"), "domain": domain,
               "personas": ["a curious student", "a science teacher"]})
    } else if prompt.contains("Task: write question-answer pairs") {
        // `[generate] one_call`: a pair for each persona listed.
        json!({"pairs": [pair("a curious student"), pair("a science teacher")]})
    } else if prompt.contains("Task: screen the document") {
        json!({"reason": "facts", "qualified": !prompt.contains("[[boilerplate]]")})
    } else if prompt.contains("Task: label the document") {
        json!({"reason": "r", "domain": domain, "personas": ["a curious student", "a science teacher"]})
    } else if prompt.contains("Task: write one question-answer pair") {
        pair(if prompt.contains("asked by a science teacher") {
            "a science teacher"
        } else {
            "a curious student"
        })
    } else if prompt.contains("Task: check each question-answer pair") {
        // `[verify] one_call`: a verdict for each pair listed.
        let n = prompt.matches("\nPair ").count();
        json!({"verdicts": (1..=n).map(|i| json!({"pair": i, "reason": "r", "has_context": true,
            "answer_correct": !prompt.contains("[[wrong]]"), "leaks_answer": false})).collect::<Vec<_>>()})
    } else if prompt.contains("Task: check a question-answer pair") {
        json!({"reason": "r", "has_context": true, "answer_correct": !prompt.contains("[[wrong]]"), "leaks_answer": false})
    } else {
        json!({"error": "unknown prompt"})
    };
    answer.to_string()
}

/// Wikipedia articles of the shared sample that pass the default quality filter: documents every
/// LLM-stage test can count on reaching the LLM.
pub fn good_articles() -> impl Iterator<Item = Value> {
    use webscale_rl_operators::quality_filter::{QualityFilterConfig, check};
    sample_lines()
        .into_iter()
        .map(|l| serde_json::from_slice::<Value>(&l).unwrap())
        .filter(|d| d["source"] == "wikitext2-test")
        .filter(|d| check(d["text"].as_str().unwrap(), &QualityFilterConfig::default()).is_ok())
}

/// A scripted OpenAI-compatible server on `runtime` answering with `answer`.
pub fn scripted_server(
    runtime: &tokio::runtime::Runtime,
    answer: impl Fn(&Value) -> String + Send + Sync + 'static,
    latency: Duration,
) -> webscale_rl_connectors::llm::scripted_server::ScriptedServer {
    use webscale_rl_connectors::llm::scripted_server::{ScriptedServer, ScriptedServerConfig};
    runtime
        .block_on(ScriptedServer::start_with(ScriptedServerConfig {
            answer: Some(std::sync::Arc::new(answer)),
            latency,
            ..Default::default()
        }))
        .unwrap()
}

/// `GET path` over plain HTTP/1.1: (status, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

/// The engine binary, with its cache and state directories (`XDG_CACHE_HOME`, `XDG_STATE_HOME`)
/// in a fresh temporary directory: runs never share a response cache unless a test says so, and
/// nothing is written into the user's home.
pub fn engine() -> std::process::Command {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicUsize, Ordering};
    static ROOT: OnceLock<tempfile::TempDir> = OnceLock::new();
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let root = ROOT.get_or_init(|| tempfile::tempdir().expect("a temporary directory"));
    let home = root
        .path()
        .join(NEXT.fetch_add(1, Ordering::Relaxed).to_string());
    let mut cmd = std::process::Command::new(BIN);
    cmd.env("XDG_CACHE_HOME", home.join("cache"))
        .env("XDG_STATE_HOME", home.join("state"));
    cmd
}

/// Runs `cmd` to completion and insists that it succeeded (its stderr is the failure message);
/// returns (stdout, stderr).
pub fn succeed(cmd: &mut std::process::Command) -> (Vec<u8>, String) {
    let out = cmd.output().expect("the command starts");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    (out.stdout, stderr)
}

/// A mock cluster holding `n` of the [`good_articles`] on its input topic.
pub fn kafka_with_articles(partitions: i32, group: &str, n: usize) -> Kafka {
    let kafka = Kafka::start(partitions, group);
    kafka.produce_lines(
        good_articles()
            .take(n)
            .map(|d| serde_json::to_vec(&d).unwrap())
            .collect(),
    );
    kafka
}
