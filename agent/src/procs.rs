//! A PID namespace's processes from a /proc, for `hull top`: the
//! guest's (the agent lists its own /proc) and a container-mode
//! container's (hull lists the container's /proc through its init).

use std::path::Path;

use crate::protocol::ProcessInfo;

/// Clock ticks per second of /proc/<pid>/stat times: USER_HZ, 100 on every
/// Linux the agent runs on (sysconf would say the same at a syscall's cost).
const TICKS_PER_SECOND: u64 = 100;

/// Fields of /proc/<pid>/stat that `hull top` needs.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    comm: String,
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
}
