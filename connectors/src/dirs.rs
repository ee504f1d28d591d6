//! Where the engine keeps files of its own between runs, following the XDG base directories:
//! caches (re-creatable: models, file-mode LLM answers) and state (what a long-running Kafka
//! deployment resumes with: its LLM response cache).

use std::path::PathBuf;

/// `$XDG_CACHE_HOME/webscale-rl`, else `$HOME/.cache/webscale-rl`.
pub fn cache_root() -> Option<PathBuf> {
    base("XDG_CACHE_HOME", ".cache")
}

/// `$XDG_STATE_HOME/webscale-rl`, else `$HOME/.local/state/webscale-rl`.
pub fn state_root() -> Option<PathBuf> {
    base("XDG_STATE_HOME", ".local/state")
}

/// The state directory of one Kafka consumer group: `state_root()/kafka/<group>`, the group name
/// made safe as a file name.
pub fn group_state_dir(group: &str) -> Option<PathBuf> {
    let safe: String = group
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    // A name that had to change gets a hash of the original: `team/x` and `team_x` are two
    // groups and must not share state. A name that is already safe keeps its directory.
    let safe = if safe == group && !safe.is_empty() && !safe.starts_with('.') {
        safe
    } else {
        let hash = xxhash_rust::xxh3::xxh3_64(group.as_bytes());
        format!("_{safe}-{:08x}", hash as u32)
    };
    Some(state_root()?.join("kafka").join(safe))
}

fn base(xdg: &str, home_relative: &str) -> Option<PathBuf> {
    std::env::var_os(xdg)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(home_relative))
        })
        .map(|b| b.join("webscale-rl"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_become_safe_directory_names() {
        // HOME is set in every test process; the XDG variables may be too.
        let root = state_root().unwrap();
        assert!(root.ends_with("webscale-rl"));
        assert_eq!(
            group_state_dir("webscale-rl").unwrap(),
            root.join("kafka/webscale-rl")
        );
        let dir = |g: &str| {
            group_state_dir(g)
                .unwrap()
                .strip_prefix(root.join("kafka"))
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned()
        };
        // Made safe (no separator, no leading dot), with a hash of the name that was changed.
        let escaped = dir("../etc/x y");
        assert!(
            escaped.starts_with("_.._etc_x_y-") && !escaped.contains('/'),
            "{escaped}"
        );
        assert!(dir("").starts_with("_-"));
        // Names that sanitize alike are still two groups.
        assert_ne!(dir("team/x"), dir("team_x"));
        assert_eq!(dir("team_x"), "team_x");
        assert!(cache_root().unwrap().ends_with("webscale-rl"));
    }
}
