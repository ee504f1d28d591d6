//! The pipeline's configuration: one TOML file (`--config pipeline.toml`), one section per stage
//! or connector. Every field has a default, and unknown fields are errors, so a typo never
//! silently changes nothing.

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use webscale_rl_connectors::kafka::{KafkaConfig, SourceConfig};
use webscale_rl_operators::exact_dedup::ExactDedupConfig;
use webscale_rl_operators::parse::ParseConfig;
use webscale_rl_operators::quality_filter::QualityFilterConfig;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    pub kafka: KafkaConfig,
    pub source: SourceConfig,
    pub parse: ParseConfig,
    pub quality_filter: QualityFilterConfig,
    pub exact_dedup: ExactDedupConfig,
}

impl PipelineConfig {
    /// Reads a TOML config file; errors name the file and the offending key.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file '{}'", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid config file '{}'", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        Ok(toml::from_str(text)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_parses_and_equals_the_defaults() {
        let example = include_str!("../../pipeline.toml");
        let cfg = PipelineConfig::parse(example).expect("pipeline.toml parses");
        let mut defaults = PipelineConfig::default();
        // The example names a broker so that it is complete; everything else is the default.
        defaults.kafka.brokers = cfg.kafka.brokers.clone();
        assert_eq!(
            cfg, defaults,
            "pipeline.toml drifted from the defaults in code"
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = PipelineConfig::parse("[quality_filter]\nmin_wrds = 3\n").unwrap_err();
        assert!(format!("{err:#}").contains("min_wrds"), "{err:#}");
    }
}
