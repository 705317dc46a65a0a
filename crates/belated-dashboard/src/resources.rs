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

/// One process's share of a reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ProcessReading {
    pub(crate) pid: u32,
    /// 100 % is one core busy.
    pub(crate) cpu_percent: f64,
    pub(crate) memory_mb: f64,
}

/// CPU and resident memory since the previous reading: in all, and per process (this one first,
/// then its worker processes by pid).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Reading {
    pub(crate) cpu_percent: f64,
    pub(crate) memory_mb: f64,
    pub(crate) processes: Vec<ProcessReading>,
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

    /// The reading since the previous sample. A process first seen now counts from the next sample on
    /// (its earlier CPU time was not spent in this interval, as far as we know).
    pub(crate) fn sample(&mut self) -> Option<Reading> {
        let (ticks_per_second, page_size) = units()?;
        let found = read()?;
        let now = Instant::now();
        let wall = self
            .last
            .as_ref()
            .map_or(0.0, |(then, _)| now.duration_since(*then).as_secs_f64());
        let me = std::process::id();
        let mut processes: Vec<ProcessReading> = found
            .iter()
            .map(|(&pid, usage)| {
                let spent = self
                    .last
                    .as_ref()
                    .and_then(|(_, ticks_then)| ticks_then.get(&pid))
                    .map_or(0.0, |then| (usage.ticks - then).max(0.0));
                ProcessReading {
                    pid,
                    cpu_percent: if wall > 0.0 {
                        100.0 * spent / ticks_per_second / wall
                    } else {
                        0.0
                    },
                    memory_mb: usage.resident_pages * page_size / 1e6,
                }
            })
            .collect();
        processes.sort_by_key(|p| (p.pid != me, p.pid));
        self.last = Some((now, ticks_of(&found)));
        Some(Reading {
            cpu_percent: processes.iter().map(|p| p.cpu_percent).sum(),
            memory_mb: processes.iter().map(|p| p.memory_mb).sum(),
            processes,
        })
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
        let reading = sampler.sample().unwrap();
        assert!(
            reading.cpu_percent > 1.0,
            "a spinning thread shows as busy: {reading:?}"
        );
        assert!(reading.memory_mb > 1.0, "{reading:?}");
        let me = reading.processes[0];
        assert_eq!(me.pid, std::process::id(), "this process comes first");
        // Tests run side by side in this process, and one starts a child: the reading is at least
        // this process's share.
        assert!(me.cpu_percent > 1.0, "{reading:?}");
        assert!(reading.memory_mb >= me.memory_mb, "{reading:?}");
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
        let reading = sampler.sample().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            reading.cpu_percent > 1.0,
            "a spinning child shows as busy: {reading:?}"
        );
        let child = reading
            .processes
            .iter()
            .find(|p| p.pid.to_string() == child_pid)
            .expect("the child has a row of its own");
        assert!(child.cpu_percent > 1.0, "{reading:?}");
    }
}
