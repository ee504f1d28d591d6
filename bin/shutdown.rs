//! SIGINT/SIGTERM: the first asks the engine to stop reading, drain, flush and commit; a second
//! exits at once. Nothing is lost either way, because offsets are committed only behind durable
//! output.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::flag;

/// Installs the handlers and returns the flag the engine polls.
pub fn install() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        // Order matters: the conditional exit sees the flag as set only on the second signal.
        flag::register_conditional_shutdown(sig, 130, Arc::clone(&stop))
            .context("installing signal handler")?;
        flag::register(sig, Arc::clone(&stop)).context("installing signal handler")?;
    }
    Ok(stop)
}
