//! Where the timely workers run: `-w` threads per process, and optionally `-n` processes that find
//! each other through a host file (`-h`, one `host:port` per line, line `i` is process `i`).

use std::path::PathBuf;

use anyhow::{Context, bail};
use timely::CommunicationConfig;

/// The worker layout of one engine process.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Worker threads in this process.
    pub workers: usize,
    /// Processes in the cluster.
    pub processes: usize,
    /// This process's index, `0..processes`.
    pub process: usize,
    /// Addresses of all processes; default `127.0.0.1:2101+i`.
    pub hostfile: Option<PathBuf>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            workers: 1,
            processes: 1,
            process: 0,
            hostfile: None,
        }
    }
}

impl ClusterOptions {
    pub fn timely_config(&self) -> anyhow::Result<timely::Config> {
        if self.workers == 0 {
            bail!("-w/--workers must be at least 1");
        }
        if self.process >= self.processes {
            bail!(
                "-p/--process {} is out of range for -n/--processes {}",
                self.process,
                self.processes
            );
        }
        let communication = if self.processes > 1 {
            let addresses = match &self.hostfile {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read host file '{}'", path.display()))?;
                    let hosts: Vec<String> = text
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty() && !l.starts_with('#'))
                        .map(String::from)
                        .collect();
                    if hosts.len() < self.processes {
                        bail!(
                            "host file '{}' lists {} hosts but -n/--processes is {}",
                            path.display(),
                            hosts.len(),
                            self.processes
                        );
                    }
                    hosts[..self.processes].to_vec()
                }
                None => (0..self.processes)
                    .map(|i| format!("127.0.0.1:{}", 2101 + i))
                    .collect(),
            };
            CommunicationConfig::Cluster {
                threads: self.workers,
                process: self.process,
                addresses,
                report: false,
                zerocopy: false,
            }
        } else if self.workers > 1 {
            CommunicationConfig::Process(self.workers)
        } else {
            CommunicationConfig::Thread
        };
        Ok(timely::Config {
            communication,
            worker: timely::WorkerConfig::default(),
        })
    }

    /// Workers across all processes.
    pub fn total_workers(&self) -> usize {
        self.workers * self.processes
    }
}

/// Runs `f` (timely's start-up) with stdout pointed at stderr: timely's cluster handshake prints
/// "awaiting connections" on stdout, which would corrupt `--output -` and `--json-summary`.
pub fn with_stdout_on_stderr<R>(f: impl FnOnce() -> R) -> R {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    // SAFETY: dup/dup2 on the process's own standard descriptors; restored below.
    let saved = unsafe { libc::dup(1) };
    if saved < 0 {
        return f();
    }
    unsafe { libc::dup2(2, 1) };
    let result = f();
    let _ = std::io::stdout().flush();
    unsafe {
        libc::dup2(saved, 1);
        libc::close(saved);
    }
    result
}
