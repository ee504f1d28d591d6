//! The start-up check of the LLM endpoints, run before anything is consumed.
//!
//! For every endpoint: `GET {base}/models` (which model is served, and is
//! the key accepted?), then — with `structured_output = "auto"` — one tiny
//! chat request per structured-output dialect until the server answers a JSON
//! object: OpenAI `json_schema`, `json_object` + `schema` (llama-cpp-python,
//! which answers `json_schema` with a 500), vLLM's `guided_json`, and last
//! plain prompting with tolerant parsing.
//!
//! The outcome is one of three: a [`StartupReport`] (the model to use and
//! each endpoint's dialect), a [`StartupError::Fatal`] (a mistake a person
//! must fix: wrong model, refused key — stop now, saying what to do), or a
//! [`StartupError::Unreachable`] (nobody answers yet: the caller waits and
//! tries again, not ready, consuming nothing).

use std::sync::atomic::Ordering;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use serde_json::{Value, json};

use super::client::{Endpoint, LlmClient, classify_refusal, dialect_index, error_chain};
use super::config::StructuredOutput;
use super::error::LlmError;
use super::parse::parse_json_answer;
use super::request::{ChatRequest, ResponseSchema};

/// Marks the probe's prompt, so a test server (or a log reader) can tell it
/// from the pipeline's calls.
pub const PROBE_MARKER: &str = "webscale-rl start-up probe";

/// Longest wait for a model list.
const LIST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the check found on one endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointReport {
    /// Base URL, without credentials.
    pub endpoint: String,
    /// The models it lists (`None`: it does not serve `GET /models`).
    pub models: Option<Vec<String>>,
    /// The structured-output dialect requests will use.
    pub dialect: StructuredOutput,
    /// Whether the dialect was probed (else it was configured).
    pub probed: bool,
}

/// What the check settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartupReport {
    /// The model used for calls that name none.
    pub model: String,
    /// The model was not configured: it is the one the servers list.
    pub model_from_server: bool,
    pub endpoints: Vec<EndpointReport>,
    /// Other endpoints whose answers, stored in the response cache for the same model identity,
    /// answer this run's calls too.
    pub cache_shared_with: Vec<String>,
}

impl StartupReport {
    /// One line per fact, for the start of a run.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![if self.model_from_server {
            format!("LLM model: {} (the one model the server lists)", self.model)
        } else {
            format!("LLM model: {}", self.model)
        }];
        for e in &self.endpoints {
            out.push(format!(
                "LLM endpoint {}: structured output as {}{}",
                e.endpoint,
                e.dialect,
                if e.probed {
                    " (probed)"
                } else {
                    " (configured)"
                }
            ));
        }
        if !self.cache_shared_with.is_empty() {
            out.push(format!(
                "LLM response cache: answers stored for {} answer here too: the servers report the \
                 same model (set llm.cache_namespace to keep them apart)",
                self.cache_shared_with.join(", ")
            ));
        }
        out
    }
}

/// Why the check did not pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartupError {
    /// A configuration mistake: stop before consuming anything.
    Fatal(String),
    /// No answer (yet): wait and try again.
    Unreachable(String),
}

impl std::fmt::Display for StartupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartupError::Fatal(m) | StartupError::Unreachable(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for StartupError {}

impl LlmClient {
    /// Lists the models of every endpoint, resolves the model, checks the
    /// stage-specific `other_models` (`(setting, model)` pairs) are served,
    /// and probes each endpoint's dialect. On success the client uses the
    /// result and its health turns *up*; an unreachable endpoint is recorded
    /// as a failure (for `/readyz`).
    pub async fn startup_check(
        &self,
        other_models: &[(String, String)],
    ) -> Result<StartupReport, StartupError> {
        let result = self.check_once(other_models).await;
        match &result {
            Ok(_) => self.inner.health.mark_up(),
            Err(StartupError::Unreachable(m)) => self.inner.health.record_failure(m),
            Err(StartupError::Fatal(_)) => {}
        }
        result
    }

    async fn check_once(
        &self,
        other_models: &[(String, String)],
    ) -> Result<StartupReport, StartupError> {
        let inner = &*self.inner;
        let mut entries = Vec::with_capacity(inner.endpoints.len());
        for ep in &inner.endpoints {
            entries.push(self.list_models(ep).await?);
        }
        let listed: Vec<Option<Vec<String>>> = entries
            .iter()
            .map(|e| {
                e.as_ref()
                    .map(|list| list.iter().map(|(id, _)| id.clone()).collect())
            })
            .collect();
        let configured = inner.config.model.clone();
        let model = resolve_model(
            configured.as_deref(),
            inner
                .endpoints
                .iter()
                .map(|e| e.display.as_str())
                .zip(&listed),
        )?;
        for (setting, m) in other_models {
            for (ep, list) in inner.endpoints.iter().zip(&listed) {
                if let Some(list) = list
                    && !list.contains(m)
                {
                    return Err(StartupError::Fatal(format!(
                        "{setting} = '{m}' is not served by {}; it serves: {}",
                        ep.display,
                        list.join(", ")
                    )));
                }
            }
        }
        let mut endpoints = Vec::with_capacity(inner.endpoints.len());
        for (ep, models) in inner.endpoints.iter().zip(listed) {
            let (dialect, probed) = match inner.config.structured_output {
                StructuredOutput::Auto => (self.probe_dialect(ep, &model).await?, true),
                forced => (forced, false),
            };
            ep.dialect.store(dialect_index(dialect), Ordering::Relaxed);
            endpoints.push(EndpointReport {
                endpoint: ep.display.clone(),
                models,
                dialect,
                probed,
            });
        }
        *inner
            .default_model
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(model.clone());
        // What the response cache keys by besides the request: the model as the servers
        // describe it, so that another model served under the same name (vLLM's
        // `--served-model-name`, another quantization of one GGUF) is never answered from it.
        let namespace = match &inner.config.cache_namespace {
            Some(ns) => format!("namespace:{ns}"),
            None => model_identity(&model, inner.endpoints.iter().zip(&entries)),
        };
        let cache_shared_with = match &inner.cache {
            Some(cache) => {
                let ours: Vec<&str> = inner.endpoints.iter().map(|e| e.display.as_str()).collect();
                cache.note_writers(&namespace, &ours).unwrap_or_else(|e| {
                    tracing::warn!("{e}");
                    Vec::new()
                })
            }
            None => Vec::new(),
        };
        *inner
            .cache_namespace
            .write()
            .unwrap_or_else(|e| e.into_inner()) = namespace;
        Ok(StartupReport {
            model_from_server: configured.is_none(),
            model,
            endpoints,
            cache_shared_with,
        })
    }

    /// `GET {base}/models`, as (id, entry): `Ok(None)` when the server does not list models.
    async fn list_models(
        &self,
        ep: &Endpoint,
    ) -> Result<Option<Vec<(String, Value)>>, StartupError> {
        let inner = &*self.inner;
        let rb = inner
            .http
            .get(ep.models_url.clone())
            .timeout(inner.config.timeout().min(LIST_TIMEOUT));
        let (status, body) = self.exchange(ep, rb).await?;
        match status {
            200..=299 => Ok(model_entries(&body)),
            401 | 403 => Err(self.auth_error(ep, status, &body)),
            404 | 405 => Ok(None),
            429 | 500.. => Err(unreachable_error(
                &ep.display,
                &format!(
                    "GET /models answered {status}: {}",
                    inner.redactor.message(&String::from_utf8_lossy(&body))
                ),
            )),
            s => Err(StartupError::Fatal(format!(
                "LLM endpoint {}: GET /models answered {s}: {}; is this the API's base URL \
                 (usually ending in /v1)?",
                ep.display,
                inner.redactor.message(&String::from_utf8_lossy(&body))
            ))),
        }
    }

    /// The first dialect in which the endpoint answers a JSON object.
    async fn probe_dialect(
        &self,
        ep: &Endpoint,
        model: &str,
    ) -> Result<StructuredOutput, StartupError> {
        let inner = &*self.inner;
        let probe = probe_request(model, "", 16, 0.0);
        let mut answered_prose = false;
        let mut last_refusal = String::new();
        for dialect in StructuredOutput::PROBE_ORDER {
            // The pipeline's own request shape: the probe tests exactly what the calls will send.
            let (status, bytes) = self.send_probe(ep, &probe, model, dialect).await?;
            if (200..300).contains(&status) {
                if completion_is_json(&bytes) {
                    return Ok(dialect);
                }
                answered_prose = true;
                continue;
            }
            let message = inner.redactor.message(&String::from_utf8_lossy(&bytes));
            match classify_refusal(status, &ep.display, message.clone(), None, dialect) {
                None => last_refusal = format!("{dialect}: {status} {message}"),
                Some(LlmError::ClientError { status, .. }) if status == 401 || status == 403 => {
                    return Err(self.auth_error(ep, status, &bytes));
                }
                Some(LlmError::ClientError { status: 404, .. }) => {
                    return Err(StartupError::Fatal(format!(
                        "LLM endpoint {} does not know model '{model}' (404: {message}); \
                         set --llm-model (or [llm] model) to a model it serves",
                        ep.display
                    )));
                }
                // Some servers refuse an unknown field without naming it.
                Some(LlmError::ClientError { .. }) if dialect != StructuredOutput::None => {
                    last_refusal = format!("{dialect}: {status} {message}");
                }
                Some(e @ LlmError::ClientError { .. }) => {
                    return Err(StartupError::Fatal(format!(
                        "LLM endpoint {} refuses a plain chat request: {e}",
                        ep.display
                    )));
                }
                Some(e) => return Err(unreachable_error(&ep.display, &e.to_string())),
            }
        }
        if answered_prose {
            tracing::warn!(
                endpoint = %ep.display,
                "no structured-output dialect made the model answer JSON; sending plain \
                 requests and parsing answers tolerantly (expect malformed_answer dead letters \
                 from a weak model)"
            );
            return Ok(StructuredOutput::None);
        }
        Err(StartupError::Fatal(format!(
            "LLM endpoint {} refused every request of the start-up probe (last: {last_refusal})",
            ep.display
        )))
    }

    /// One request per stage with the stage's own model, temperature and token limit, on every
    /// endpoint, in the dialect the check settled: a parameter the server refuses (a 400 for
    /// `temperature = 5`), or an answer without content, stops the engine here with the stage's
    /// name, instead of dead-lettering every document. Run after [`LlmClient::startup_check`].
    pub async fn probe_stages(&self, stages: &[StageProbe]) -> Result<(), StartupError> {
        let inner = &*self.inner;
        let default_model = self.default_model().unwrap_or_default();
        for stage in stages {
            let model = if stage.model.is_empty() {
                default_model.as_str()
            } else {
                stage.model.as_str()
            };
            let probe = probe_request(
                model,
                &format!(" for {}", stage.section),
                stage.max_tokens,
                stage.temperature,
            );
            for ep in &inner.endpoints {
                let (status, bytes) = self.send_probe(ep, &probe, model, ep.dialect()).await?;
                let what = format!(
                    "[{}] (model '{model}', temperature {}, max_tokens {})",
                    stage.section, stage.temperature, stage.max_tokens
                );
                if (200..300).contains(&status) {
                    if completion_content(&bytes).is_none() {
                        return Err(StartupError::Fatal(format!(
                            "LLM endpoint {} answered the probe of {what} without any content \
                             (`content: null`): every call would be a malformed answer; check \
                             the server and the model",
                            ep.display
                        )));
                    }
                    continue;
                }
                let message = inner.redactor.message(&String::from_utf8_lossy(&bytes));
                if status == 429 || status >= 500 {
                    return Err(unreachable_error(
                        &ep.display,
                        &format!("the probe of {what} answered {status}: {message}"),
                    ));
                }
                return Err(StartupError::Fatal(format!(
                    "LLM endpoint {} refused the settings of {what} with {status}: {message}; fix \
                     them in the config",
                    ep.display
                )));
            }
        }
        Ok(())
    }

    /// Sends a probe in `dialect`: the pipeline's own request shape, so the probe tests exactly
    /// what the calls will send.
    async fn send_probe(
        &self,
        ep: &Endpoint,
        probe: &ChatRequest,
        model: &str,
        dialect: StructuredOutput,
    ) -> Result<(u16, Vec<u8>), StartupError> {
        let inner = &*self.inner;
        let rb = inner
            .http
            .post(ep.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .timeout(inner.config.timeout())
            .body(probe.body(model, dialect).to_string());
        self.exchange(ep, rb).await
    }

    fn auth_error(&self, ep: &Endpoint, status: u16, body: &[u8]) -> StartupError {
        let inner = &*self.inner;
        let env = &inner.config.api_key_env;
        let hint = match (&inner.auth, env.is_empty()) {
            (Some(_), _) => format!("check the API key in ${env}"),
            (None, false) => format!("no API key is set: put it in ${env}"),
            (None, true) => "no API key is sent (llm.api_key_env is empty)".to_owned(),
        };
        StartupError::Fatal(format!(
            "LLM endpoint {} refused the request with {status} ({}): {hint}",
            ep.display,
            inner.redactor.message(&String::from_utf8_lossy(body))
        ))
    }

    /// Sends `rb` with the API key; the status and body, or `Unreachable` when nothing answers.
    async fn exchange(
        &self,
        ep: &Endpoint,
        mut rb: reqwest::RequestBuilder,
    ) -> Result<(u16, Vec<u8>), StartupError> {
        let inner = &*self.inner;
        if let Some(auth) = &inner.auth {
            rb = rb.header(AUTHORIZATION, auth.clone());
        }
        let unreachable = |e: reqwest::Error| {
            let what = if e.is_timeout() {
                "timed out".to_owned()
            } else {
                inner.redactor.message(&error_chain(e))
            };
            unreachable_error(&ep.display, &what)
        };
        let resp = rb.send().await.map_err(unreachable)?;
        let status = resp.status().as_u16();
        match super::client::read_bounded(resp, inner.config.max_response_bytes)
            .await
            .map_err(unreachable)?
        {
            Ok(body) => Ok((status, body)),
            Err(read) => Err(StartupError::Fatal(format!(
                "LLM endpoint {} answered the start-up probe with a body of {read} bytes or \
                 more (llm.max_response_bytes = {}): not an OpenAI-compatible server",
                ep.display, inner.config.max_response_bytes
            ))),
        }
    }
}

fn unreachable_error(endpoint: &str, what: &str) -> StartupError {
    StartupError::Unreachable(format!("LLM endpoint {endpoint} not reachable: {what}"))
}

/// The entries of an OpenAI-style model list (`{"data": [{"id": ...}]}`, or a
/// bare array of such objects), with their `id`s.
fn model_entries(body: &[u8]) -> Option<Vec<(String, Value)>> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let list = v.get("data").unwrap_or(&v).as_array()?;
    Some(
        list.iter()
            .filter_map(|m| Some((m.get("id")?.as_str()?.to_owned(), m.clone())))
            .collect(),
    )
}

#[cfg(test)]
fn model_ids(body: &[u8]) -> Option<Vec<String>> {
    Some(model_entries(body)?.into_iter().map(|(id, _)| id).collect())
}

/// Fields of a `/models` entry that change between two listings of one model: vLLM stamps
/// `created` with the time of the request and gives each `permission` a fresh id.
const VOLATILE_MODEL_FIELDS: &[&str] = &["created", "permission"];

/// What identifies `model` on these endpoints: each one's `/models` entry for it, less its
/// volatile fields (vLLM's `root` and `max_model_len`, llama.cpp's `meta` with the GGUF's
/// size and parameters, the local model's file hash), in canonical JSON; an endpoint that lists
/// nothing is identified by its URL, since nothing else tells its model apart.
fn model_identity<'a>(
    model: &str,
    endpoints: impl Iterator<Item = (&'a Endpoint, &'a Option<Vec<(String, Value)>>)>,
) -> String {
    let mut parts: Vec<String> = endpoints
        .map(|(ep, entries)| {
            let entry = entries
                .as_ref()
                .and_then(|list| list.iter().find(|(id, _)| id == model));
            match entry {
                Some((_, Value::Object(fields))) => {
                    let mut fields = fields.clone();
                    for f in VOLATILE_MODEL_FIELDS {
                        fields.remove(*f);
                    }
                    let mut canonical = String::from("model:");
                    super::cache::write_canonical_json(&Value::Object(fields), &mut canonical);
                    canonical
                }
                _ => format!("endpoint:{}", ep.display),
            }
        })
        .collect();
    parts.sort();
    parts.dedup();
    parts.join("\n")
}

/// The tiny request of every probe: asks for `{"ok": true}` under a schema. `about` follows the
/// marker (which stage it probes), so the scripted test server counts it apart.
fn probe_request(model: &str, about: &str, max_tokens: u32, temperature: f64) -> ChatRequest {
    ChatRequest::new(model)
        .user(format!(
            "{PROBE_MARKER}{about}. Reply with the JSON object {{\"ok\": true}} and nothing else."
        ))
        .max_tokens(max_tokens)
        .temperature(temperature)
        .schema(ResponseSchema::new(
            "webscale_probe",
            json!({
                "type": "object",
                "properties": {"ok": {"type": "boolean"}},
                "required": ["ok"]
            }),
        ))
}

/// A stage's call settings, for [`LlmClient::probe_stages`].
#[derive(Clone, Debug, PartialEq)]
pub struct StageProbe {
    /// The stage's config section (`generate`), for the error.
    pub section: String,
    /// Empty: the default model.
    pub model: String,
    pub temperature: f64,
    pub max_tokens: u32,
}

/// The text of a chat completion's first answer, if it has one.
fn completion_content(body: &[u8]) -> Option<String> {
    let v = serde_json::from_slice::<Value>(body).ok()?;
    let choice = &v["choices"][0];
    choice["message"]["content"]
        .as_str()
        .or(choice["text"].as_str())
        .map(str::to_owned)
}

/// Whether a chat completion's first answer holds a JSON object.
fn completion_is_json(body: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    let choice = &v["choices"][0];
    let content = choice["message"]["content"]
        .as_str()
        .or(choice["text"].as_str())
        .unwrap_or("");
    parse_json_answer(content).is_some()
}

/// The model for calls that name none: the configured one, which every
/// listing endpoint must serve, or else the one model they all list.
fn resolve_model<'a>(
    configured: Option<&str>,
    listed: impl Iterator<Item = (&'a str, &'a Option<Vec<String>>)>,
) -> Result<String, StartupError> {
    let listed: Vec<_> = listed.collect();
    if let Some(m) = configured {
        for (ep, list) in &listed {
            if let Some(list) = list
                && !list.iter().any(|x| x == m)
            {
                return Err(StartupError::Fatal(if list.is_empty() {
                    format!("model '{m}' is not served by {ep}: it lists no model")
                } else {
                    format!(
                        "model '{m}' is not served by {ep}; it serves: {}. Set --llm-model \
                         (or [llm] model) to one of them",
                        list.join(", ")
                    )
                }));
            }
        }
        return Ok(m.to_owned());
    }
    let mut lists = listed
        .iter()
        .filter_map(|(ep, l)| l.as_ref().map(|l| (ep, l)));
    let Some((ep, first)) = lists.next() else {
        return Err(StartupError::Fatal(
            "no model named and the endpoints do not list their models (GET /models): give \
             --llm-model NAME (or [llm] model)"
                .to_owned(),
        ));
    };
    match first.as_slice() {
        [] => Err(StartupError::Fatal(format!(
            "{ep} lists no model: is the server still loading one? Give --llm-model NAME"
        ))),
        [only] => {
            for (other, list) in lists {
                if !list.contains(only) {
                    return Err(StartupError::Fatal(format!(
                        "no model named: {ep} serves '{only}' but {other} serves {}; give \
                         --llm-model NAME",
                        list.join(", ")
                    )));
                }
            }
            Ok(only.clone())
        }
        many => Err(StartupError::Fatal(format!(
            "no model named and {ep} serves several: {}; choose one with --llm-model NAME \
             (or [llm] model)",
            many.join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fatal(r: Result<String, StartupError>) -> String {
        match r {
            Err(StartupError::Fatal(m)) => m,
            other => panic!("expected a fatal error, got {other:?}"),
        }
    }

    #[test]
    fn model_resolution() {
        let one = Some(vec!["qwen".to_string()]);
        let two = Some(vec!["a".to_string(), "b".to_string()]);
        let none: Option<Vec<String>> = None;
        let empty = Some(vec![]);
        let eps = |ls: &[&'static Option<Vec<String>>]| -> Vec<(&'static str, &'static Option<Vec<String>>)> {
            ls.iter().map(|l| ("http://h/v1", *l)).collect()
        };
        // Leak for 'static test data.
        let one: &'static _ = Box::leak(Box::new(one));
        let two: &'static _ = Box::leak(Box::new(two));
        let none: &'static _ = Box::leak(Box::new(none));
        let empty: &'static _ = Box::leak(Box::new(empty));

        assert_eq!(
            resolve_model(None, eps(&[one]).into_iter()).unwrap(),
            "qwen"
        );
        assert_eq!(
            resolve_model(None, eps(&[none, one]).into_iter()).unwrap(),
            "qwen"
        );
        let m = fatal(resolve_model(None, eps(&[two]).into_iter()));
        assert!(
            m.contains("serves several: a, b") && m.contains("--llm-model"),
            "{m}"
        );
        let m = fatal(resolve_model(None, eps(&[empty]).into_iter()));
        assert!(m.contains("lists no model"), "{m}");
        let m = fatal(resolve_model(None, eps(&[none]).into_iter()));
        assert!(m.contains("do not list their models"), "{m}");
        assert_eq!(
            resolve_model(Some("b"), eps(&[two]).into_iter()).unwrap(),
            "b"
        );
        assert_eq!(
            resolve_model(Some("x"), eps(&[none]).into_iter()).unwrap(),
            "x"
        );
        let m = fatal(resolve_model(Some("x"), eps(&[two]).into_iter()));
        assert!(
            m.contains("'x' is not served") && m.contains("it serves: a, b"),
            "{m}"
        );
        let m = fatal(resolve_model(None, eps(&[one, two]).into_iter()));
        assert!(m.contains("but"), "{m}");
    }

    #[test]
    fn model_lists_and_json_answers() {
        assert_eq!(
            model_ids(br#"{"object":"list","data":[{"id":"m1"},{"id":"m2"}]}"#),
            Some(vec!["m1".into(), "m2".into()])
        );
        assert_eq!(model_ids(br#"[{"id":"m"}]"#), Some(vec!["m".into()]));
        assert_eq!(model_ids(b"<html>"), None);
        let answer = |c: &str| json!({"choices": [{"message": {"content": c}}]}).to_string();
        assert!(completion_is_json(answer(r#"{"ok": true}"#).as_bytes()));
        assert!(!completion_is_json(answer("Sure! OK.").as_bytes()));
        assert!(!completion_is_json(b"not json"));
    }
}
