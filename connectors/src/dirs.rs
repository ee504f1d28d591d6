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
    let safe = if safe.is_empty() || safe.starts_with('.') {
        format!("_{safe}")
    } else {
        safe
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
        assert_eq!(
            group_state_dir("../etc/x y").unwrap(),
            root.join("kafka/_.._etc_x_y")
        );
        assert_eq!(group_state_dir("").unwrap(), root.join("kafka/_"));
        assert!(cache_root().unwrap().ends_with("webscale-rl"));
    }
}
