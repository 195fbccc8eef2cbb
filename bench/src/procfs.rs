//! Reading `/proc`: a process's CPU time and resident memory, and our own open-file limit.
//!
//! The parsers take the file's text so they can be tested on sample text; the `read_*`
//! wrappers do the I/O and return `None` where the file is missing or unreadable (the
//! server may have exited, or `/proc` may not exist), so a report can say "unknown"
//! instead of failing the run.

use std::process::Command;

/// CPU time a process has used so far, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTicks {
    /// Time in user mode (`utime`, field 14 of `/proc/PID/stat`).
    pub user: u64,
    /// Time in kernel mode (`stime`, field 15).
    pub system: u64,
}

impl CpuTicks {
    /// User plus system time.
    pub fn total(&self) -> u64 {
        self.user + self.system
    }
}

/// Parses `utime` and `stime` out of the text of `/proc/PID/stat`.
///
/// Field 2 (`comm`) is in parentheses and may itself contain spaces and parentheses,
/// so the fields are counted from the *last* `)`.
pub fn parse_stat_cpu(stat: &str) -> Option<CpuTicks> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // After comm: field 3 (state) is index 0, so utime (14) is index 11, stime (15) is 12.
    let mut fields = after_comm.split_ascii_whitespace();
    let user = fields.nth(11)?.parse().ok()?;
    let system = fields.next()?.parse().ok()?;
    Some(CpuTicks { user, system })
}

/// Parses `VmRSS` (resident set size, KiB) out of the text of `/proc/PID/status`.
pub fn parse_vmrss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_ascii_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// One resource limit: soft and hard, `None` meaning unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// The limit in force (what `ulimit -n` prints).
    pub soft: Option<u64>,
    /// The ceiling an unprivileged process may raise the soft limit to.
    pub hard: Option<u64>,
}

/// Parses the "Max open files" line out of the text of `/proc/self/limits`.
pub fn parse_open_files_limit(limits: &str) -> Option<Limit> {
    let rest = limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))?;
    let mut fields = rest.split_ascii_whitespace();
    let parse = |s: &str| -> Option<Option<u64>> {
        if s == "unlimited" {
            Some(None)
        } else {
            s.parse().ok().map(Some)
        }
    };
    let soft = parse(fields.next()?)?;
    let hard = parse(fields.next()?)?;
    Some(Limit { soft, hard })
}

/// CPU ticks of process `pid` (or `"self"`), if readable.
pub fn read_cpu(pid: &str) -> Option<CpuTicks> {
    parse_stat_cpu(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Resident memory of process `pid` (or `"self"`) in KiB, if readable.
pub fn read_rss_kib(pid: &str) -> Option<u64> {
    parse_vmrss_kib(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// Our own open-file limit, if readable.
pub fn read_open_files_limit() -> Option<Limit> {
    parse_open_files_limit(&std::fs::read_to_string("/proc/self/limits").ok()?)
}

/// How many file descriptors we have open now.
pub fn count_open_fds() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
}

/// Clock ticks per second (`getconf CLK_TCK`), 100 if it cannot be asked.
pub fn clock_ticks_per_sec() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// CPU used by one process between two points of a run.
#[derive(Debug, Clone, Copy)]
pub struct CpuMeter {
    /// The process's CPU ticks when the meter started (`None`: not readable).
    pid_start: Option<CpuTicks>,
    /// Ticks per second, to turn ticks into milliseconds.
    ticks_per_sec: u64,
}

impl CpuMeter {
    /// Starts measuring `pid` now; a missing process measures as `None` at the end.
    pub fn start(pid: &str, ticks_per_sec: u64) -> Self {
        CpuMeter {
            pid_start: read_cpu(pid),
            ticks_per_sec,
        }
    }

    /// Milliseconds of CPU (user + system) used by `pid` since [`CpuMeter::start`].
    pub fn elapsed_ms(&self, pid: &str) -> Option<f64> {
        let start = self.pid_start?;
        let end = read_cpu(pid)?;
        Some(ticks_to_ms(
            end.total().saturating_sub(start.total()),
            self.ticks_per_sec,
        ))
    }
}

/// Converts clock ticks into milliseconds.
pub fn ticks_to_ms(ticks: u64, ticks_per_sec: u64) -> f64 {
    ticks as f64 * 1000.0 / ticks_per_sec.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_counts_fields_after_the_last_paren() {
        // comm with a space and a paren, as a thread or a python script can have.
        let stat = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    517 83 0 0 20 0 3 0 123456 1000000 2500 18446744073709551615";
        assert_eq!(
            parse_stat_cpu(stat),
            Some(CpuTicks {
                user: 517,
                system: 83
            })
        );
        assert_eq!(parse_stat_cpu(stat).map(|c| c.total()), Some(600));
    }

    #[test]
    fn stat_cpu_rejects_truncated_text() {
        assert_eq!(parse_stat_cpu("1 (x) S 1 2 3"), None);
        assert_eq!(parse_stat_cpu("no parens here"), None);
    }

    #[test]
    fn vmrss_is_read_in_kib() {
        let status = "Name:\ttidings\nVmPeak:\t  900000 kB\nVmRSS:\t   41236 kB\nThreads:\t3\n";
        assert_eq!(parse_vmrss_kib(status), Some(41236));
        assert_eq!(parse_vmrss_kib("Name:\tzombie\n"), None);
    }

    #[test]
    fn open_files_limit_soft_and_hard() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max open files            20000                20000                files     \n";
        assert_eq!(
            parse_open_files_limit(limits),
            Some(Limit {
                soft: Some(20000),
                hard: Some(20000)
            })
        );
        let unlimited =
            "Max open files            1024                 unlimited            files\n";
        assert_eq!(
            parse_open_files_limit(unlimited),
            Some(Limit {
                soft: Some(1024),
                hard: None
            })
        );
    }

    #[test]
    fn ticks_convert_to_ms() {
        assert_eq!(ticks_to_ms(250, 100), 2500.0);
        assert_eq!(ticks_to_ms(3, 1000), 3.0);
    }
}
