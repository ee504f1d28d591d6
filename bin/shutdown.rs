//! SIGINT/SIGTERM: the first asks the engine to stop — in Kafka mode it stops reading, drains,
//! flushes and commits; in file mode it records its progress and stops at once (the next run
//! resumes) — and a second exits at once. Nothing is lost either way, because offsets and
//! progress records are written only behind durable output.

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
