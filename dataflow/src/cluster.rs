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
            let addresses = self.addresses()?;
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

    /// The `host:port` of every process: the host file's lines, or `127.0.0.1:2101+i`.
    pub fn addresses(&self) -> anyhow::Result<Vec<String>> {
        Ok(match &self.hostfile {
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
        })
    }
}

/// Exit status of a process whose cluster peer died (or became unreachable).
pub const EXIT_PEER_LOST: i32 = 3;

/// Makes the loss of a cluster peer an orderly error instead of a cascade of panics. Timely's
/// network threads (`timely:recv-N`, `timely:send-N`) panic with "timely communication error:"
/// when the connection to process N breaks, and the workers then panic on a poisoned queue. The
/// hook catches the first of these, names the peer, and exits with [`EXIT_PEER_LOST`] at once:
/// nothing more is committed than what the durable frontier already allowed, so a restart of all
/// processes loses nothing. Other panics go to the previous hook.
pub fn exit_on_peer_loss(addresses: Vec<String>) {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if !(message.starts_with("timely communication error:")
            || message.contains("MergeQueue poisoned"))
        {
            return previous(info);
        }
        let thread = std::thread::current();
        let peer = thread
            .name()
            .and_then(|n| {
                n.strip_prefix("timely:recv-")
                    .or(n.strip_prefix("timely:send-"))
            })
            .and_then(|i| i.parse::<usize>().ok());
        let who = match peer {
            Some(i) => format!(
                "process {i} ({})",
                addresses.get(i).map_or("?", String::as_str)
            ),
            None => "a peer process".to_owned(),
        };
        eprintln!(
            "error: lost the connection to cluster {who}: {message}. A timely cluster fails as a \
             whole: this process stops without committing anything past its durable output \
             (exit {EXIT_PEER_LOST}); restart all processes and nothing is lost"
        );
        std::process::exit(EXIT_PEER_LOST);
    }));
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
