//! CPU and memory of this process and of its child processes (the workers of the processes scheduler
//! and of a local cluster, where the tasks then run), read from `/proc` (Linux). Elsewhere no samples
//! are taken and the page says so.

use std::collections::HashMap;
use std::time::Instant;

/// What `/proc/<pid>/stat` tells of one process.
struct Usage {
    parent: u32,
    /// CPU time in clock ticks, user and system.
    ticks: f64,
    resident_pages: f64,
}

fn usage(pid: &str) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; the fields after its closing parenthesis do not.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let number = |i: usize| fields.get(i)?.parse::<f64>().ok();
    Some(Usage {
        parent: fields.get(1)?.parse().ok()?,
        ticks: number(11)? + number(12)?,
        resident_pages: number(21)?,
    })
}

/// This process and its children: pid → usage.
fn read() -> Option<HashMap<u32, Usage>> {
    let me = std::process::id();
    let mut found = HashMap::from([(me, usage("self")?)]);
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        // A process may end between the listing and the read; it is then simply not counted.
        if let Some(child) = usage(&pid.to_string()).filter(|u| u.parent == me) {
            found.insert(pid, child);
        }
    }
    Some(found)
}

/// Clock ticks per second and bytes per page.
fn units() -> Option<(f64, f64)> {
    // SAFETY: sysconf only reads configuration values and has no preconditions.
    let (ticks_per_second, page_size) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    (ticks_per_second > 0 && page_size > 0).then_some((ticks_per_second as f64, page_size as f64))
}

/// Turns successive readings into CPU percentages (100 % = one core busy) and resident megabytes.
#[derive(Debug)]
pub(crate) struct Sampler {
    /// When the last reading was taken, and each process's CPU ticks then.
    last: Option<(Instant, HashMap<u32, f64>)>,
}

impl Sampler {
    pub(crate) fn new() -> Self {
        Sampler {
            last: read().map(|found| (Instant::now(), ticks_of(&found))),
        }
    }

    /// `(cpu_percent, memory_mb)` since the previous sample. A process first seen now counts from
    /// the next sample on (its earlier CPU time was not spent in this interval, as far as we know).
    pub(crate) fn sample(&mut self) -> Option<(f64, f64)> {
        let (ticks_per_second, page_size) = units()?;
        let found = read()?;
        let now = Instant::now();
        let memory = found.values().map(|u| u.resident_pages).sum::<f64>() * page_size / 1e6;
        let percent = match &self.last {
            Some((then, ticks_then)) => {
                let wall = now.duration_since(*then).as_secs_f64();
                let ticks: f64 = found
                    .iter()
                    .filter_map(|(pid, u)| Some((u.ticks - ticks_then.get(pid)?).max(0.0)))
                    .sum();
                if wall > 0.0 {
                    100.0 * ticks / ticks_per_second / wall
                } else {
                    0.0
                }
            }
            None => 0.0,
        };
        self.last = Some((now, ticks_of(&found)));
        Some((percent, memory))
    }
}

fn ticks_of(found: &HashMap<u32, Usage>) -> HashMap<u32, f64> {
    found.iter().map(|(pid, u)| (*pid, u.ticks)).collect()
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    use std::time::Duration;

    /// CPU seconds spent so far by `pid`, as /proc counts them.
    fn cpu_seconds(pid: &str) -> f64 {
        usage(pid).unwrap().ticks / units().unwrap().0
    }

    /// Spins until this process has spent `seconds` more of CPU time. On a loaded machine that takes
    /// longer by the wall clock, so the tests below expect a known CPU time in the interval (0.2 s), not
    /// a share of the wall clock: only a 20 s interval would make it read under 1 %.
    fn spin_for_cpu(seconds: f64) {
        let until = cpu_seconds("self") + seconds;
        let mut spin = 0u64;
        while cpu_seconds("self") < until {
            for _ in 0..100_000 {
                spin = std::hint::black_box(spin.wrapping_add(1));
            }
        }
    }

    #[test]
    fn samples_see_busy_cpu_and_resident_memory() {
        let mut sampler = Sampler::new();
        spin_for_cpu(0.2);
        let (busy, memory) = sampler.sample().unwrap();
        assert!(busy > 1.0, "a spinning thread shows as busy: {busy}");
        assert!(memory > 1.0, "{memory} MB resident");
    }

    #[test]
    fn samples_count_the_work_of_child_processes() {
        let mut sampler = Sampler::new();
        let mut child = std::process::Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .unwrap();
        let child_pid = child.id().to_string();
        // Let a sample see the child, then measure while this process only sleeps and the child spends
        // a known amount of CPU time.
        while usage(&child_pid).is_none() {
            std::thread::sleep(Duration::from_millis(10));
        }
        sampler.sample().unwrap();
        let until = cpu_seconds(&child_pid) + 0.2;
        while cpu_seconds(&child_pid) < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        let (busy, _) = sampler.sample().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(busy > 1.0, "a spinning child shows as busy: {busy}");
    }
}
