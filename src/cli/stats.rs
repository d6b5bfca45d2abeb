//! `hull stats`: what each running container's VM costs the host — the
//! VMM process's CPU (guest and VMM together) and resident memory against
//! the guest's memory size — as Docker's table, once (`--no-stream`) or
//! refreshed every second.

use std::path::Path;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{json, Value};

use super::output::Format;
use crate::container::state::Status;
use crate::container::store::{self, Container, ContainerStore};

/// The columns of `hull stats`.
const DEFAULT_TABLE: &str =
    "{{.ID}}\t{{.Name}}\t{{.CPUPerc}}\t{{.MemUsage}}\t{{.MemPerc}}\t{{.PIDs}}";

/// Options of `hull stats`.
#[derive(Args, Debug)]
pub struct StatsArgs {
    /// Print one sample and exit.
    #[arg(long)]
    no_stream: bool,
    /// `table`, `table TEMPLATE`, `json` or a Go template (`{{.Name}}
    /// {{.CPUPerc}}`).
    #[arg(long)]
    format: Option<String>,
    /// Containers (default: every running one).
    containers: Vec<String>,
}

/// One VMM process's counters at an instant.
struct Sample {
    /// User + system CPU time in clock ticks.
    ticks: u64,
    rss_bytes: u64,
    threads: u64,
    at: Instant,
}

/// Reads `/proc/PID/stat`: CPU ticks, threads and resident pages.
fn sample(pid: i32) -> Option<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces: state is
    // field 3, utime 14, stime 15, num_threads 20, rss 24 (in pages).
    let rest = stat.rsplit_once(") ")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i - 3).and_then(|s| s.parse::<u64>().ok());
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    Some(Sample {
        ticks: num(14)? + num(15)?,
        threads: num(20)?,
        rss_bytes: num(24)? * page,
        at: Instant::now(),
    })
}

/// Runs `hull stats`.
pub fn run(args: &StatsArgs, root: &Path) -> anyhow::Result<u8> {
    let store = ContainerStore::new(root);
    let format = Format::parse(args.format.as_deref().unwrap_or("table"), DEFAULT_TABLE)?;
    loop {
        let list = containers(&store, &args.containers)?;
        let first: Vec<Option<Sample>> = list.iter().map(sample_container).collect();
        std::thread::sleep(Duration::from_millis(500));
        let rows: Vec<Value> = list
            .iter()
            .zip(first)
            .map(|(c, before)| row(c, before, sample_container(c)))
            .collect();
        if !args.no_stream {
            // Docker redraws the table in place.
            print!("\x1b[2J\x1b[H");
        }
        format.print(&headers(), &rows)?;
        if args.no_stream {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn containers(store: &ContainerStore, names: &[String]) -> anyhow::Result<Vec<Container>> {
    if names.is_empty() {
        return Ok(store
            .list()?
            .into_iter()
            .filter(|c| c.state.status == Status::Running)
            .collect());
    }
    Ok(names
        .iter()
        .map(|n| store.find(n))
        .collect::<Result<Vec<_>, _>>()?)
}

/// The counters of a running container's hull process and its confined
/// VMM process (which holds the guest), summed.
fn sample_container(c: &Container) -> Option<Sample> {
    if c.state.status != Status::Running {
        return None;
    }
    let mut total = sample(c.state.vmm_pid?)?;
    if let Some(vm) = c.state.vm_pid.and_then(sample) {
        total.ticks += vm.ticks;
        total.rss_bytes += vm.rss_bytes;
        total.threads += vm.threads;
    }
    Some(total)
}

fn headers() -> Value {
    json!({
        "ID": "CONTAINER ID",
        "Container": "CONTAINER",
        "Name": "NAME",
        "CPUPerc": "CPU %",
        "MemUsage": "MEM USAGE / LIMIT",
        "MemPerc": "MEM %",
        "PIDs": "PIDS",
    })
}

/// A container's row from two samples of its VMM; a stopped container
/// shows zeros, as in Docker.
fn row(c: &Container, before: Option<Sample>, after: Option<Sample>) -> Value {
    let limit = c.config.mem_mib << 20;
    let (cpu, rss, threads) = match (before, after) {
        (Some(b), Some(a)) => {
            // SAFETY: sysconf has no preconditions.
            let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
            let secs = a.at.duration_since(b.at).as_secs_f64().max(0.001);
            let used = a.ticks.saturating_sub(b.ticks) as f64 / hz;
            (used / secs * 100.0, a.rss_bytes, a.threads)
        }
        _ => (0.0, 0, 0),
    };
    json!({
        "ID": store::short(&c.config.id),
        "Container": store::short(&c.config.id),
        "Name": c.config.name,
        "CPUPerc": format!("{cpu:.2}%"),
        "MemUsage": format!("{} / {}", mib(rss), mib(limit)),
        "MemPerc": format!("{:.2}%", rss as f64 * 100.0 / limit.max(1) as f64),
        "PIDs": threads.to_string(),
    })
}

/// Docker's binary units for memory: `12.5MiB`.
fn mib(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.2}GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1}MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_process_samples() {
        let s = sample(std::process::id() as i32).unwrap();
        assert!(s.rss_bytes > 0 && s.threads >= 1);
        assert_eq!(mib(256 << 20), "256.0MiB");
    }
}
