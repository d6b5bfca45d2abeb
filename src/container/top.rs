//! `hull top`: the container's processes as a table, from the agent's
//! `/proc` listing (the guest's PIDs: the container is the whole guest).

use agent_protocol::protocol::ProcessInfo;

/// `[[DD-]HH:]MM:SS`, as ps prints elapsed times.
fn duration(ms: u64) -> String {
    let s = ms / 1000;
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h) {
        (0, 0) => format!("{m:02}:{s:02}"),
        (0, _) => format!("{h:02}:{m:02}:{s:02}"),
        _ => format!("{d}-{h:02}:{m:02}:{s:02}"),
    }
}

/// The table `hull top` prints: one header line, one line per process.
pub fn table(procs: &[ProcessInfo]) -> String {
    let mut out = format!(
        "{:<8}{:<8}{:<8}{:<12}{:<12}CMD\n",
        "UID", "PID", "PPID", "ELAPSED", "TIME"
    );
    for p in procs {
        out.push_str(&format!(
            "{:<8}{:<8}{:<8}{:<12}{:<12}{}\n",
            p.uid,
            p.pid,
            p.ppid,
            duration(p.running_ms),
            duration(p.cpu_ms),
            // One line per process: control characters (a script's
            // newlines, escape sequences) show as `?`, as ps shows them.
            p.command
                .join(" ")
                .chars()
                .map(|c| if c.is_control() { '?' } else { c })
                .collect::<String>()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_make_a_table() {
        let procs = [ProcessInfo {
            pid: 12,
            ppid: 1,
            uid: 1000,
            cpu_ms: 61_500,
            running_ms: 90_061_000,
            command: vec!["/bin/sh".into(), "-c".into(), "sleep 1\n\x1b[2J".into()],
        }];
        assert_eq!(
            table(&procs),
            "UID     PID     PPID    ELAPSED     TIME        CMD\n\
             1000    12      1       1-01:01:01  01:01       /bin/sh -c sleep 1??[2J\n"
        );
        assert_eq!(duration(3_600_000), "01:00:00");
        assert_eq!(table(&[]).lines().count(), 1);
    }
}
