//! A process's resident memory and CPU time from `/proc`, and this tool's
//! file-descriptor limit.

use anyhow::Context;

/// Resident set size in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS line")?;
    line.split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()
        .context("VmRSS value")
}

/// Open file descriptors (entries of `/proc/<pid>/fd`).
pub fn fd_count(pid: u32) -> anyhow::Result<u64> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("reading /proc/{pid}/fd"))?
        .count() as u64)
}

/// Descriptors summed over `pids`.
pub fn fd_count_sum(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| fd_count(*p).ok()).sum()
}

/// User plus system CPU time in seconds.
pub fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: fields start after
    // the last ')'.
    let rest = &stat[stat.rfind(')').context("stat format")? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, utime 14, stime 15 (1-based overall).
    let utime: u64 = f.get(11).context("utime")?.parse()?;
    let stime: u64 = f.get(12).context("stime")?.parse()?;
    Ok((utime + stime) as f64 / clock_ticks())
}

/// RSS summed over `pids` (several instances); `None` without pids or
/// when one cannot be read.
pub fn rss_kib_sum(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| rss_kib(*p).ok()).sum()
}

/// CPU seconds summed over `pids`.
pub fn cpu_secs_sum(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| cpu_secs(*p).ok()).sum()
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux).
pub fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// What happened to the descriptor limit.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FdLimit {
    pub before: u64,
    pub now: u64,
    pub needed: u64,
    /// Why the limit stays below what is needed, when it does.
    pub problem: Option<String>,
}

/// Raises this process's soft `RLIMIT_NOFILE` towards `needed` (up to the
/// hard limit).
pub fn raise_fd_limit(needed: u64) -> FdLimit {
    let (soft, hard) = rlimit::Resource::NOFILE.get().unwrap_or((0, 0));
    let target = needed.min(hard).max(soft);
    let now = if target > soft {
        match rlimit::Resource::NOFILE.set(target, hard) {
            Ok(()) => target,
            Err(_) => soft,
        }
    } else {
        soft
    };
    let problem = (now < needed).then(|| {
        format!(
            "the file-descriptor limit is {now} (hard limit {hard}) but {needed} are needed: raise it (ulimit -n {needed}, or LimitNOFILE= for a service)"
        )
    });
    FdLimit {
        before: soft,
        now,
        needed,
        problem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_memory_and_cpu() {
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 100);
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(cpu_secs(me).unwrap() >= 0.0);
        assert!(rss_kib(u32::MAX).is_err());
        assert_eq!(rss_kib_sum(&[]), None);
        assert_eq!(rss_kib_sum(&[me, u32::MAX]), None);
        assert!(rss_kib_sum(&[me, me]).unwrap() >= 2 * 100);
        assert!(cpu_secs_sum(&[me]).is_some());
    }

    #[test]
    fn the_limit_is_raised_no_further_than_needed_and_a_shortfall_is_said() {
        let l = raise_fd_limit(64);
        assert!(l.now >= 64 && l.problem.is_none(), "{l:?}");
        let huge = raise_fd_limit(u64::MAX / 2);
        let p = huge.problem.expect("no machine allows that many");
        assert!(p.contains("ulimit -n"), "{p}");
    }
}
