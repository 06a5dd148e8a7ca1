//! CPU time of a process, from `/proc/<pid>/stat`.

/// User plus system time, in clock ticks, from the text of `/proc/<pid>/stat`: fields 14 and
/// 15, every thread of the process counted, its waited-for children not. The command name
/// (field 2) may hold spaces and parentheses, so fields are counted after its last `)`.
pub fn stat_ticks(stat: &str) -> Option<u64> {
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    // After the name: state is field 3, so utime (14) is the 12th.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`_SC_CLK_TCK`, which Linux fixes at 100 for user space).
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf reads a constant; it takes no pointers.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// The CPU seconds process `pid` has used so far; `None` once it is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat_ticks(&stat)? as f64 / clock_ticks())
}
