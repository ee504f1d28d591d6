//! The pipeline's configuration: one TOML file (`--config pipeline.toml`), one section per stage
//! or connector. Every field has a default, and unknown fields are errors, so a typo never
//! silently changes nothing.

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use webscale_rl_connectors::kafka::{KafkaConfig, SourceConfig};
use webscale_rl_connectors::llm::LlmConfig;
use webscale_rl_operators::classify::ClassifyConfig;
use webscale_rl_operators::decontaminate::DecontaminateConfig;
use webscale_rl_operators::exact_dedup::ExactDedupConfig;
use webscale_rl_operators::generate::GenerateConfig;
use webscale_rl_operators::llm_filter::LlmFilterConfig;
use webscale_rl_operators::minhash::NearDedupConfig;
use webscale_rl_operators::parse::ParseConfig;
use webscale_rl_operators::quality_filter::QualityFilterConfig;
use webscale_rl_operators::verify::VerifyConfig;
use webscale_rl_records::Stage;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    pub kafka: KafkaConfig,
    pub source: SourceConfig,
    pub parse: ParseConfig,
    pub quality_filter: QualityFilterConfig,
    pub exact_dedup: ExactDedupConfig,
    pub near_dedup: NearDedupConfig,
    pub decontaminate: DecontaminateConfig,
    /// The LLM server(s). Absent: no LLM is configured (the CLI's `--llm-url` / `--llm local`
    /// supply one; `--no-llm` runs the CPU stages only).
    pub llm: Option<LlmConfig>,
    pub llm_filter: LlmFilterConfig,
    pub classify: ClassifyConfig,
    pub generate: GenerateConfig,
    pub verify: VerifyConfig,
    /// Where the dedup state lives in Kafka mode: changelog topics (`[state]`).
    pub state: webscale_rl_connectors::kafka::StateConfig,
}

impl PipelineConfig {
    /// Whether the config switches `stage` on. Parsing, classification and generation are the
    /// method itself and always run (the last two with an LLM); `verify.enabled` switches only
    /// its LLM check, the deterministic checks always run.
    pub fn enabled(&self, stage: Stage) -> bool {
        match stage {
            Stage::Parse | Stage::Classify | Stage::Generate | Stage::Verify => true,
            Stage::QualityFilter => self.quality_filter.enabled,
            Stage::ExactDedup => self.exact_dedup.enabled,
            Stage::NearDedup => self.near_dedup.enabled,
            Stage::Decontaminate => {
                self.decontaminate.enabled && self.decontaminate.check_documents
            }
            Stage::LlmFilter => self.llm_filter.enabled,
        }
    }

    /// Reads a TOML config file; errors name the file and the offending key.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file '{}'", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid config file '{}'", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let cfg: Self = toml::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks settings that parse but cannot run.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.near_dedup.validate().map_err(anyhow::Error::msg)?;
        self.decontaminate.validate().map_err(anyhow::Error::msg)?;
        for (section, call) in [
            ("llm_filter", self.llm_filter.call()),
            ("classify", self.classify.call()),
            ("generate", self.generate.call()),
            ("verify", self.verify.call()),
        ] {
            call.validate(section).map_err(anyhow::Error::msg)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_switches_name_their_stages() {
        let mut cfg = PipelineConfig::parse(
            "[llm_filter]\nenabled = false\n[decontaminate]\ncheck_documents = false\n",
        )
        .unwrap();
        assert!(!cfg.enabled(Stage::LlmFilter));
        assert!(!cfg.enabled(Stage::Decontaminate));
        assert!(cfg.enabled(Stage::Verify) && cfg.enabled(Stage::Classify));
        cfg.decontaminate.check_documents = true;
        assert!(cfg.enabled(Stage::Decontaminate));
        cfg.decontaminate.enabled = false;
        assert!(!cfg.enabled(Stage::Decontaminate));
        // A switch that does nothing is not offered: classification is the method itself.
        let err = PipelineConfig::parse("[classify]\nenabled = false\n").unwrap_err();
        assert!(format!("{err:#}").contains("enabled"), "{err:#}");
    }

    #[test]
    fn the_shipped_example_parses_and_equals_the_defaults() {
        let example = include_str!("../../pipeline.toml");
        let cfg = PipelineConfig::parse(example).expect("pipeline.toml parses");
        let mut defaults = PipelineConfig::default();
        // The example names a broker and an LLM server so that it is complete; everything else
        // is the default.
        defaults.kafka.brokers = cfg.kafka.brokers.clone();
        defaults.llm = Some(LlmConfig::default());
        assert_eq!(
            cfg, defaults,
            "pipeline.toml drifted from the defaults in code"
        );
    }

    #[test]
    fn stage_parameters_no_server_accepts_stop_the_load() {
        // Each was a dead letter for every document, with exit 0, before it was checked here.
        for (toml, names) in [
            ("[generate]\ntemperature = nan\n", "[generate] temperature"),
            ("[generate]\ntemperature = 5.0\n", "[generate] temperature"),
            ("[classify]\ntemperature = -1.0\n", "[classify] temperature"),
            ("[verify]\nmax_tokens = 0\n", "[verify] max_tokens"),
            (
                "[llm_filter]\ntemperature = inf\n",
                "[llm_filter] temperature",
            ),
        ] {
            let err = PipelineConfig::parse(toml).unwrap_err();
            assert!(format!("{err:#}").contains(names), "{toml}: {err:#}");
        }
        PipelineConfig::parse("[generate]\ntemperature = 2.0\n").unwrap();
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = PipelineConfig::parse("[quality_filter]\nmin_wrds = 3\n").unwrap_err();
        assert!(format!("{err:#}").contains("min_wrds"), "{err:#}");
    }
}
