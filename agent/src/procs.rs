//! The guest's processes from /proc: listed for `hull top`, and all
//! killed when the container's main process has exited.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use agent::protocol::ProcessInfo;

/// Clock ticks per second of /proc/<pid>/stat times: USER_HZ, 100 on every
/// Linux the agent runs on (sysconf would say the same at a syscall's cost).
const TICKS_PER_SECOND: u64 = 100;

/// Fields of /proc/<pid>/stat that `hull top` needs.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    comm: String,
    /// `R`, `S`, ... `Z` for a zombie (exited, its files closed).
    state: char,
    ppid: i32,
    /// Kernel threads carry PF_KTHREAD (0x200000) in their flags.
    flags: u64,
    cpu_ticks: u64,
    start_ticks: u64,
}

/// Parses a stat line. The name is in parentheses and may itself hold
/// spaces and parentheses: everything up to the *last* `)` is the name.
fn parse_stat(line: &str) -> Option<Stat> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let comm = line.get(open + 1..close)?.to_string();
    // Fields after the name, numbered from 3 (state) as in proc(5).
    let rest: Vec<&str> = line.get(close + 1..)?.split_whitespace().collect();
    let field = |n: usize| rest.get(n - 3).copied();
    let num = |n: usize| field(n)?.parse::<u64>().ok();
    Some(Stat {
        comm,
        state: field(3)?.chars().next()?,
        ppid: field(4)?.parse().ok()?,
        flags: num(9)?,
        cpu_ticks: num(14)? + num(15)?,
        start_ticks: num(22)?,
    })
}

const PF_KTHREAD: u64 = 0x0020_0000;

fn uid_of(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Every process under `proc` except `exclude` (the agent) and kernel
/// threads, in PID order. Processes that end while being read are skipped.
pub fn list(proc: &Path, uptime_seconds: f64, exclude: i32) -> Vec<ProcessInfo> {
    let mut pids: Vec<i32> = std::fs::read_dir(proc)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    pids.sort_unstable();
    let uptime_ms = (uptime_seconds * 1000.0) as u64;
    pids.into_iter()
        .filter(|&pid| pid != exclude)
        .filter_map(|pid| {
            let dir = proc.join(pid.to_string());
            let stat = parse_stat(&std::fs::read_to_string(dir.join("stat")).ok()?)?;
            if stat.flags & PF_KTHREAD != 0 {
                return None;
            }
            let uid = uid_of(&std::fs::read_to_string(dir.join("status")).ok()?)?;
            let cmdline = std::fs::read(dir.join("cmdline")).ok()?;
            let mut command: Vec<String> = cmdline
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if command.is_empty() {
                command.push(format!("[{}]", stat.comm));
            }
            Some(ProcessInfo {
                pid,
                ppid: stat.ppid,
                uid,
                cpu_ms: stat.cpu_ticks * 1000 / TICKS_PER_SECOND,
                running_ms: uptime_ms.saturating_sub(stat.start_ticks * 1000 / TICKS_PER_SECOND),
                command,
            })
        })
        .collect()
}

/// PIDs under `proc` that descend from `top` (not `top` itself) and are
/// alive: zombies and dead processes have closed their files already and
/// cannot be killed again; kernel threads are never signalled.
fn live_descendants(proc: &Path, top: i32) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<(i32, bool)>> = HashMap::new();
    let Ok(dir) = std::fs::read_dir(proc) else {
        return Vec::new();
    };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        // A process that ends while being read is gone: nothing to kill.
        let Some(stat) = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|l| parse_stat(&l))
        else {
            continue;
        };
        let alive = !matches!(stat.state, 'Z' | 'X' | 'x') && stat.flags & PF_KTHREAD == 0;
        children.entry(stat.ppid).or_default().push((pid, alive));
    }
    let mut found = Vec::new();
    let mut seen = HashSet::from([top]);
    let mut todo = vec![top];
    while let Some(parent) = todo.pop() {
        for &(pid, alive) in children.get(&parent).map_or(&[][..], Vec::as_slice) {
            // Each PID has one parent, so this only guards against a /proc
            // that changed under the scan.
            if !seen.insert(pid) {
                continue;
            }
            if alive {
                found.push(pid);
            }
            // A zombie's children have been reparented already; its entry
            // stays until it is reaped.
            todo.push(pid);
        }
    }
    found
}

/// Sends SIGKILL to every live descendant of `top` until none is left (a
/// process may fork between a scan and the kill: scan again), or until
/// `patience` has passed. In the guest `top` is the agent, PID 1: every
/// process but kernel threads descends from it, orphans included. Returns
/// how many processes were signalled.
pub fn kill_descendants(proc: &Path, top: i32, patience: Duration) -> usize {
    let start = Instant::now();
    let mut killed = HashSet::new();
    loop {
        let live = live_descendants(proc, top);
        if live.is_empty() || start.elapsed() > patience {
            return killed.len();
        }
        for pid in live {
            // SAFETY: kill(2) has no memory effects; `pid` descends from
            // `top`, which is never signalled itself.
            if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
                killed.insert(pid);
            }
        }
        // Dying takes the emulated guest kernel a moment.
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_hostile_names_parse() {
        let line = "42 (a) b (c)) S 7 42 42 0 -1 4194560 1 0 0 0 250 50 0 0 20 0 1 0 1234 0 0";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                comm: "a) b (c)".into(),
                state: 'S',
                ppid: 7,
                flags: 4194560,
                cpu_ticks: 300,
                start_ticks: 1234,
            })
        );
        assert_eq!(parse_stat("42 (x) S"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn lists_real_processes_but_not_the_excluded_one_or_kernel_threads() {
        let uptime: f64 = std::fs::read_to_string("/proc/uptime")
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let me = std::process::id() as i32;
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        // spawn() returns once the exec has closed our CLOEXEC pipe, but
        // the kernel fills in the argument area a moment later: until then
        // /proc/PID/cmdline is empty (the listing shows "[sleep]").
        let cmdline = format!("/proc/{}/cmdline", child.id());
        for _ in 0..500 {
            if std::fs::read(&cmdline).is_ok_and(|c| !c.is_empty()) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let procs = list(Path::new("/proc"), uptime, me);
        let _ = child.kill();
        let _ = child.wait();
        assert!(procs.iter().all(|p| p.pid != me));
        let sleep = procs
            .iter()
            .find(|p| p.pid == child.id() as i32)
            .expect("the child is listed");
        assert_eq!(sleep.ppid, me);
        assert_eq!(sleep.command, ["sleep", "30"]);
        // SAFETY: getuid has no preconditions.
        assert_eq!(sleep.uid, unsafe { libc::getuid() });
        assert!(sleep.running_ms < 60_000, "{sleep:?}");
        // kthreadd (PID 2) and its children are never listed, when this
        // /proc shows them at all.
        assert!(procs.iter().all(|p| p.pid != 2 && p.ppid != 2));
    }

    #[test]
    fn kills_every_descendant_but_not_the_top_and_their_output_ends() {
        // Only descendants of a child of the test are in reach, never the
        // test runner or anything else on the machine.
        use std::io::Read;
        let mut top = std::process::Command::new("sh")
            .arg("-c")
            .arg(
                "(echo child; exec sleep 1000) & \
                 sh -c '(echo grandchild; exec sleep 1000) & wait' & \
                 exec sleep 2000 >/dev/null",
            )
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let top_pid = top.id() as i32;
        let mut out = top.stdout.take().unwrap();
        let mut seen = String::new();
        let mut buf = [0u8; 64];
        while seen.lines().count() < 2 {
            let n = out.read(&mut buf).unwrap();
            assert!(n > 0, "{seen:?}");
            seen.push_str(std::str::from_utf8(&buf[..n]).unwrap());
        }
        // The two subshells and the inner sh; they have written already.
        let proc = Path::new("/proc");
        assert_eq!(live_descendants(proc, top_pid).len(), 3);
        let t0 = Instant::now();
        assert_eq!(kill_descendants(proc, top_pid, Duration::from_secs(10)), 3);
        assert!(live_descendants(proc, top_pid).is_empty());
        // Every holder of the pipe is gone: it ends, nothing was lost.
        let mut rest = String::new();
        out.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "");
        let mut lines: Vec<&str> = seen.lines().collect();
        lines.sort_unstable();
        assert_eq!(lines, ["child", "grandchild"]);
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        // The top itself was left alone.
        assert!(top.try_wait().unwrap().is_none());
        let _ = top.kill();
        let _ = top.wait();
    }
}
