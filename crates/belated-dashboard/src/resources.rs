//! CPU and memory of this process, read from `/proc` (Linux). Elsewhere no samples are taken and the
//! page says so.

use std::time::Instant;

/// CPU time (seconds) and resident memory (MB) of this process, if the platform tells.
fn read() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may contain spaces; the fields after its closing parenthesis do not.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let resident_pages: f64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads configuration values and has no preconditions.
    let (ticks_per_second, page_size) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if ticks_per_second <= 0 || page_size <= 0 {
        return None;
    }
    Some((
        ticks / ticks_per_second as f64,
        resident_pages * page_size as f64 / 1e6,
    ))
}

/// Turns successive readings into CPU percentages (100 % = one core busy).
#[derive(Debug)]
pub(crate) struct Sampler {
    last: Option<(Instant, f64)>,
}

impl Sampler {
    pub(crate) fn new() -> Self {
        Sampler {
            last: read().map(|(cpu, _)| (Instant::now(), cpu)),
        }
    }

    /// `(cpu_percent, memory_mb)` since the previous sample.
    pub(crate) fn sample(&mut self) -> Option<(f64, f64)> {
        let (cpu, memory) = read()?;
        let now = Instant::now();
        let percent = match self.last {
            Some((then, cpu_then)) => {
                let wall = now.duration_since(then).as_secs_f64();
                if wall > 0.0 {
                    100.0 * (cpu - cpu_then) / wall
                } else {
                    0.0
                }
            }
            None => 0.0,
        };
        self.last = Some((now, cpu));
        Some((percent, memory))
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn samples_see_busy_cpu_and_resident_memory() {
        let mut sampler = Sampler::new();
        let start = Instant::now();
        let mut spin = 0u64;
        while start.elapsed().as_millis() < 200 {
            spin = std::hint::black_box(spin.wrapping_add(1));
        }
        let (cpu, memory) = sampler.sample().unwrap();
        assert!(cpu > 30.0, "a spinning thread shows as busy: {cpu}");
        assert!(memory > 1.0, "{memory} MB resident");
    }
}
