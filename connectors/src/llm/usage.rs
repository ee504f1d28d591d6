//! Usage and cost accounting of LLM calls, per (stage, model).
//!
//! The client records every logical call, every HTTP attempt, retries, errors
//! by kind, cache hits and the tokens the server reported; cost comes from the
//! configured price of the model. [`UsageTracker::snapshot`] returns a plain,
//! serializable copy for run summaries and metrics.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use serde::Serialize;

use super::config::Price;

/// Counters of one (stage, model) pair, or totals over all of them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UsageCounters {
    /// Logical calls (`chat_json` invocations), cache hits included.
    pub calls: u64,
    /// Calls that returned an answer (cache hits included).
    pub successes: u64,
    /// Calls that returned an error, by error kind (final outcome).
    pub failures: BTreeMap<String, u64>,
    /// HTTP requests sent (first attempts and retries).
    pub http_requests: u64,
    /// HTTP requests that were retries.
    pub retries: u64,
    /// Failed attempts, by error kind (retried or not).
    pub errors: BTreeMap<String, u64>,
    /// Calls answered from the response cache (no HTTP request).
    pub cache_hits: u64,
    /// Prompt tokens reported by the servers (malformed answers included).
    pub prompt_tokens: u64,
    /// Of the prompt tokens, those the servers served from their prefix cache.
    pub cached_prompt_tokens: u64,
    /// Completion tokens reported by the servers.
    pub completion_tokens: u64,
    /// Cost of those tokens at the configured price (0 for unpriced models).
    pub cost: f64,
    /// Sum of the latencies of successful non-cached calls, in milliseconds
    /// (queueing and retries included).
    pub latency_ms_sum: f64,
}

impl UsageCounters {
    fn add(&mut self, o: &UsageCounters) {
        self.calls += o.calls;
        self.successes += o.successes;
        for (k, v) in &o.failures {
            *self.failures.entry(k.clone()).or_default() += v;
        }
        self.http_requests += o.http_requests;
        self.retries += o.retries;
        for (k, v) in &o.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        self.cache_hits += o.cache_hits;
        self.prompt_tokens += o.prompt_tokens;
        self.cached_prompt_tokens += o.cached_prompt_tokens;
        self.completion_tokens += o.completion_tokens;
        self.cost += o.cost;
        self.latency_ms_sum += o.latency_ms_sum;
    }

    /// Failed calls, all kinds together.
    pub fn failed_calls(&self) -> u64 {
        self.failures.values().sum()
    }
}

/// Counters of one (stage, model) pair.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageUsage {
    pub stage: String,
    pub model: String,
    #[serde(flatten)]
    pub counters: UsageCounters,
}

/// A copy of all counters, sorted by (stage, model).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UsageSnapshot {
    pub stages: Vec<StageUsage>,
    pub total: UsageCounters,
}

impl UsageSnapshot {
    /// Counters of one (stage, model) pair, if it saw any call.
    pub fn get(&self, stage: &str, model: &str) -> Option<&UsageCounters> {
        self.stages
            .iter()
            .find(|s| s.stage == stage && s.model == model)
            .map(|s| &s.counters)
    }

    /// Counters of one stage, all models together.
    pub fn stage(&self, stage: &str) -> UsageCounters {
        let mut c = UsageCounters::default();
        for s in self.stages.iter().filter(|s| s.stage == stage) {
            c.add(&s.counters);
        }
        c
    }
}

/// Thread-safe accumulator of [`UsageCounters`] keyed by (stage, model).
#[derive(Debug, Default)]
pub struct UsageTracker {
    prices: HashMap<String, Price>,
    map: Mutex<HashMap<(String, String), UsageCounters>>,
}

impl UsageTracker {
    /// A tracker pricing tokens with `prices` (model name → price).
    pub fn new(prices: HashMap<String, Price>) -> Self {
        UsageTracker {
            prices,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn with<R>(&self, stage: &str, model: &str, f: impl FnOnce(&mut UsageCounters) -> R) -> R {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        // Look up by borrowed key first: no allocation on the hot path.
        if let Some(c) = map
            .iter_mut()
            .find(|((s, m), _)| s == stage && m == model)
            .map(|(_, c)| c)
        {
            return f(c);
        }
        f(map.entry((stage.to_owned(), model.to_owned())).or_default())
    }

    /// A logical call starts.
    pub fn record_call(&self, stage: &str, model: &str) {
        self.with(stage, model, |c| c.calls += 1);
    }

    /// An HTTP request is about to be sent; `retry` when it is not the
    /// call's first.
    pub fn record_attempt(&self, stage: &str, model: &str, retry: bool) {
        self.with(stage, model, |c| {
            c.http_requests += 1;
            if retry {
                c.retries += 1;
            }
        });
    }

    /// The server reported token usage for one answer (well-formed or not).
    pub fn record_tokens(&self, stage: &str, model: &str, usage: &super::request::Usage) {
        let (prompt, cached, completion) = (
            usage.prompt_tokens,
            usage.cached_prompt_tokens,
            usage.completion_tokens,
        );
        let cost = self
            .prices
            .get(model)
            .map_or(0.0, |p| p.cost(prompt, cached, completion));
        self.with(stage, model, |c| {
            c.prompt_tokens += prompt;
            c.cached_prompt_tokens += cached;
            c.completion_tokens += completion;
            c.cost += cost;
        });
    }

    /// One attempt failed with an error of `kind`.
    pub fn record_error(&self, stage: &str, model: &str, kind: &str) {
        self.with(stage, model, |c| {
            *c.errors.entry(kind.to_owned()).or_default() += 1;
        });
    }

    /// The call ended with an answer; `cached` when it came from the cache.
    pub fn record_success(&self, stage: &str, model: &str, cached: bool, latency_ms: f64) {
        self.with(stage, model, |c| {
            c.successes += 1;
            if cached {
                c.cache_hits += 1;
            } else {
                c.latency_ms_sum += latency_ms;
            }
        });
    }

    /// The call ended with an error of `kind`.
    pub fn record_failure(&self, stage: &str, model: &str, kind: &str) {
        self.with(stage, model, |c| {
            *c.failures.entry(kind.to_owned()).or_default() += 1;
        });
    }

    /// A copy of all counters, sorted by (stage, model), with totals.
    pub fn snapshot(&self) -> UsageSnapshot {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let mut stages: Vec<StageUsage> = map
            .iter()
            .map(|((stage, model), c)| StageUsage {
                stage: stage.clone(),
                model: model.clone(),
                counters: c.clone(),
            })
            .collect();
        drop(map);
        stages.sort_by(|a, b| (&a.stage, &a.model).cmp(&(&b.stage, &b.model)));
        let mut total = UsageCounters::default();
        for s in &stages {
            total.add(&s.counters);
        }
        UsageSnapshot { stages, total }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_stage_and_model_with_cost() {
        let mut prices = HashMap::new();
        prices.insert(
            "m1".to_owned(),
            Price {
                prompt_per_million: 1.0,
                completion_per_million: 4.0,
                cached_prompt_per_million: None,
            },
        );
        let t = UsageTracker::new(prices);
        t.record_call("qa", "m1");
        t.record_attempt("qa", "m1", false);
        t.record_error("qa", "m1", "server_error");
        t.record_attempt("qa", "m1", true);
        let tokens = |prompt, cached, completion| crate::llm::Usage {
            prompt_tokens: prompt,
            cached_prompt_tokens: cached,
            completion_tokens: completion,
        };
        t.record_tokens("qa", "m1", &tokens(1000, 0, 250));
        t.record_success("qa", "m1", false, 12.0);
        t.record_call("qa", "m1");
        t.record_success("qa", "m1", true, 0.0);
        t.record_call("judge", "m2");
        t.record_attempt("judge", "m2", false);
        t.record_tokens("judge", "m2", &tokens(10, 6, 10));
        t.record_error("judge", "m2", "malformed_answer");
        t.record_failure("judge", "m2", "malformed_answer");

        let s = t.snapshot();
        assert_eq!(s.stages.len(), 2);
        assert_eq!(s.stages[0].stage, "judge"); // sorted
        let qa = s.get("qa", "m1").unwrap();
        assert_eq!(qa.calls, 2);
        assert_eq!(qa.successes, 2);
        assert_eq!(qa.cache_hits, 1);
        assert_eq!(qa.http_requests, 2);
        assert_eq!(qa.retries, 1);
        assert_eq!(qa.errors["server_error"], 1);
        assert_eq!(qa.prompt_tokens, 1000);
        assert_eq!(qa.completion_tokens, 250);
        assert!((qa.cost - 0.002).abs() < 1e-12);
        assert_eq!(qa.latency_ms_sum, 12.0);
        let judge = s.get("judge", "m2").unwrap();
        assert_eq!(judge.cost, 0.0); // unpriced model
        assert_eq!(judge.failed_calls(), 1);
        assert_eq!(s.total.calls, 3);
        assert_eq!(s.total.prompt_tokens, 1010);
        assert_eq!(s.total.failures["malformed_answer"], 1);
        assert_eq!(s.stage("qa").calls, 2);
        assert_eq!(s.stage("none").calls, 0);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["stages"][1]["prompt_tokens"], 1000);
    }
}
