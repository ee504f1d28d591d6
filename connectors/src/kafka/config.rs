//! Kafka connection settings shared by the source, the sinks and the CLI tools.
//!
//! Any librdkafka property can be set (`properties`), but secrets are only ever read from the
//! environment (`secret_env`), so they never sit in a config file, a log line or an error.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};

/// librdkafka's sensitive properties (`_RK_SENSITIVE` in `rdkafka_conf.c`, librdkafka 2.12) and
/// their aliases: refused in `properties`, accepted via `secret_env`, so that their values never
/// sit in a config file. (librdkafka counts a key file's location and a user name as sensitive
/// too; so do we.)
const SECRET_PROPERTIES: &[&str] = &[
    "sasl.username",
    "sasl.password",
    "sasl.oauthbearer.config",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.client.credentials.client.secret",
    "sasl.oauthbearer.assertion.private.key.file",
    "sasl.oauthbearer.assertion.private.key.passphrase",
    "sasl.oauthbearer.assertion.private.key.pem",
    "ssl.key.location",
    "ssl.key.password",
    "ssl.key.pem",
    "ssl_key",
    "ssl.ca.pem",
    "ssl.keystore.password",
];

/// Properties the engine's guarantees rest on (offsets committed only behind durable output,
/// idempotent acknowledged writes, no read of aborted records): refused, with the reason, rather
/// than silently switched off by a tuning section. Aliases included.
const DURABILITY_PROPERTIES: &[(&str, &str)] = &[
    (
        "enable.auto.commit",
        "offsets are committed only behind durable output",
    ),
    (
        "auto.commit.enable",
        "offsets are committed only behind durable output",
    ),
    (
        "enable.auto.offset.store",
        "offsets are committed only behind durable output",
    ),
    (
        "acks",
        "records count as written only when every in-sync replica has them",
    ),
    (
        "request.required.acks",
        "records count as written only when every in-sync replica has them",
    ),
    (
        "enable.idempotence",
        "a retried write must not duplicate records",
    ),
    ("isolation.level", "the engine reads committed records only"),
    ("group.id", "the consumer group is [kafka] group (--group)"),
];

/// Environment variable read for `sasl.password` when `secret_env` does not name one.
pub const DEFAULT_SASL_PASSWORD_ENV: &str = "WEBSCALE_KAFKA_SASL_PASSWORD";

/// Where the engine's Kafka lives and how to talk to it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port...]`. Empty means "not configured".
    pub brokers: String,
    pub input_topic: String,
    pub output_topic: String,
    pub dead_letter_topic: String,
    /// Consumer group whose committed offsets mark what the engine has durably processed.
    pub group: String,
    /// Extra librdkafka properties (TLS, SASL mechanism, tuning), applied to every client.
    pub properties: BTreeMap<String, String>,
    /// librdkafka property -> name of the environment variable holding its (secret) value.
    pub secret_env: BTreeMap<String, String>,
    /// Seconds to wait for the brokers before failing with a clear error.
    pub connect_timeout_secs: u64,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: String::new(),
            input_topic: "webscale.documents".into(),
            output_topic: "webscale.qa".into(),
            dead_letter_topic: "webscale.dead-letter".into(),
            group: "webscale-rl".into(),
            properties: BTreeMap::new(),
            secret_env: BTreeMap::new(),
            connect_timeout_secs: 10,
        }
    }
}

impl KafkaConfig {
    /// A librdkafka client config with brokers, properties and secrets from the environment.
    pub fn client_config(&self) -> anyhow::Result<ClientConfig> {
        self.client_config_with(&[])
    }

    /// Like [`Self::client_config`], with `defaults` that the user's `properties` may override.
    pub fn client_config_with(&self, defaults: &[(&str, &str)]) -> anyhow::Result<ClientConfig> {
        if self.brokers.trim().is_empty() {
            bail!("no Kafka brokers configured (set --brokers or [kafka] brokers)");
        }
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &self.brokers);
        for (k, v) in defaults {
            cfg.set(*k, *v);
        }
        for (k, v) in &self.properties {
            if SECRET_PROPERTIES.contains(&k.as_str()) {
                bail!(
                    "Kafka property '{k}' is a secret: do not put it in the config file; \
                     name the environment variable that holds it in [kafka.secret_env]"
                );
            }
            if let Some((_, why)) = DURABILITY_PROPERTIES.iter().find(|(p, _)| p == k) {
                bail!(
                    "Kafka property '{k}' cannot be set in [kafka.properties]: the engine sets it \
                     itself ({why}); remove it"
                );
            }
            cfg.set(k, v);
        }
        for (k, var) in &self.secret_env {
            if let Some((_, why)) = DURABILITY_PROPERTIES.iter().find(|(p, _)| p == k) {
                bail!("Kafka property '{k}' cannot be set: the engine sets it itself ({why})");
            }
            let value = std::env::var(var).with_context(|| {
                format!("Kafka property '{k}' should come from environment variable '{var}', which is not set")
            })?;
            cfg.set(k, value);
        }
        if !self.secret_env.contains_key("sasl.password")
            && let Ok(value) = std::env::var(DEFAULT_SASL_PASSWORD_ENV)
        {
            cfg.set("sasl.password", value);
        }
        // librdkafka logs through its own logger: keep its chatter at warnings.
        cfg.set_log_level(rdkafka::config::RDKafkaLogLevel::Warning);
        check_values(&cfg)?;
        Ok(cfg)
    }

    pub fn connect_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.connect_timeout_secs.max(1))
    }
}

/// Has librdkafka check every property now, so that a bad value is reported here, without its
/// value: librdkafka's own message quotes it (`Invalid value "s3cret" for configuration property
/// "sasl.oauthbearer.client.secret"`), and the value may be a secret from the environment.
fn check_values(cfg: &ClientConfig) -> anyhow::Result<()> {
    match cfg.create_native_config() {
        Ok(_) => Ok(()),
        Err(rdkafka::error::KafkaError::ClientConfig(_, description, key, value)) => {
            let description = if value.is_empty() {
                description
            } else {
                description.replace(&value, "[redacted]")
            };
            bail!("Kafka property '{key}': {description} (its value is not shown)")
        }
        Err(e) => bail!("Kafka client configuration: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_come_only_from_the_environment() {
        let mut cfg = KafkaConfig {
            brokers: "localhost:9092".into(),
            ..Default::default()
        };
        cfg.properties
            .insert("sasl.password".into(), "hunter2".into());
        let err = cfg.client_config().unwrap_err().to_string();
        assert!(err.contains("secret_env"), "{err}");
        assert!(
            !err.contains("hunter2"),
            "the secret leaked into the error: {err}"
        );

        cfg.properties.clear();
        cfg.secret_env
            .insert("sasl.password".into(), "WEBSCALE_TEST_UNSET_VAR_X".into());
        let err = cfg.client_config().unwrap_err().to_string();
        assert!(err.contains("WEBSCALE_TEST_UNSET_VAR_X"), "{err}");

        // SAFETY: the test owns this variable name; no other test reads it.
        unsafe { std::env::set_var("WEBSCALE_TEST_SET_VAR_Y", "s3cret") };
        cfg.secret_env
            .insert("sasl.password".into(), "WEBSCALE_TEST_SET_VAR_Y".into());
        let client = cfg.client_config().unwrap();
        assert_eq!(client.get("sasl.password"), Some("s3cret"));
        assert!(!format!("{cfg:?}").contains("s3cret"));
    }

    #[test]
    fn every_sensitive_property_and_alias_is_refused_and_no_value_is_echoed() {
        for key in SECRET_PROPERTIES {
            let mut cfg = KafkaConfig {
                brokers: "localhost:9092".into(),
                ..Default::default()
            };
            cfg.properties
                .insert((*key).into(), "hunter2-secret".into());
            let err = format!("{:#}", cfg.client_config().unwrap_err());
            assert!(
                err.contains("secret_env") && !err.contains("hunter2"),
                "{key}: {err}"
            );
        }
        // A bad value from the environment: librdkafka's message quotes it; ours does not.
        // SAFETY: the test owns this variable name; no other test reads it.
        unsafe { std::env::set_var("WEBSCALE_TEST_BAD_SECRET_Z", "not-a-number-s3cret") };
        let mut cfg = KafkaConfig {
            brokers: "localhost:9092".into(),
            ..Default::default()
        };
        cfg.secret_env.insert(
            "sasl.oauthbearer.client.secret".into(),
            "WEBSCALE_TEST_BAD_SECRET_Z".into(),
        );
        cfg.properties
            .insert("linger.ms".into(), "not-a-number-s3cret".into());
        // Whichever librdkafka checks first (its order is a hash map's): neither value shows.
        let err = format!("{:#}", cfg.client_config().unwrap_err());
        assert!(
            (err.contains("linger.ms") || err.contains("sasl.oauthbearer.client.secret"))
                && !err.contains("s3cret"),
            "{err}"
        );
    }

    #[test]
    fn the_durability_settings_cannot_be_switched_off() {
        for (key, _) in DURABILITY_PROPERTIES {
            let mut cfg = KafkaConfig {
                brokers: "localhost:9092".into(),
                ..Default::default()
            };
            cfg.properties.insert((*key).into(), "false".into());
            let err = format!("{:#}", cfg.client_config().unwrap_err());
            assert!(
                err.contains(key) && err.contains("the engine sets it"),
                "{err}"
            );
        }
    }

    #[test]
    fn missing_brokers_is_a_clear_error() {
        let err = KafkaConfig::default()
            .client_config()
            .unwrap_err()
            .to_string();
        assert!(err.contains("--brokers"), "{err}");
    }
}
