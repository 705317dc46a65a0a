//! The five examples of the dask.delayed tutorial (shared/seed/dask_delayed_tutorial.txt) in Rust, each
//! checked against the plain sequential code and timed against it.
//!
//! `cargo run --release --example tutorial -p belated [-- --quick] [--pictures DIR]`
//!
//! `--quick` divides the artificial sleeps by 10, for tests. `--pictures DIR` also draws each example's
//! graph to `DIR/exampleN.png`, as the tutorial's `visualize()` cells do.
//!
//! The sleeping examples (1, 2, 3, 5) run on 16 threads, like the tutorial's cluster of 4 workers with 4
//! threads each. Their tasks wait rather than compute, so how many run at once is bounded by threads, not
//! by cores: on a 2-core machine the default pool (one thread per core) would take 5 rounds of sleeps for
//! 10 tasks instead of 1. Example 4 parses CSV files, real CPU work, so it uses the default pool, and its
//! speedup is bounded by the number of cores.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use belated::{delayed, Delayed, Options};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// The tutorial's cluster: 4 workers × 4 threads.
const SLEEPING_THREADS: usize = 16;

struct Tutorial {
    /// The tutorial's "1 second" of artificial work.
    second: Duration,
    pictures: Option<PathBuf>,
}

impl Tutorial {
    fn sleep(&self, seconds: f64) {
        std::thread::sleep(self.second.mul_f64(seconds));
    }

    fn report<T: PartialEq + std::fmt::Debug>(
        &self,
        name: &str,
        sequential: (T, Duration),
        parallel: (T, Duration),
    ) -> Result<()> {
        if sequential.0 != parallel.0 {
            return Err(format!(
                "{name}: belated gave {:?} but sequential code gave {:?}",
                parallel.0, sequential.0
            )
            .into());
        }
        println!(
            "{name:<34} {:>22}  sequential {:>7.3} s  belated {:>7.3} s  speedup {:>5.1}x",
            format!("{:?}", parallel.0),
            sequential.1.as_secs_f64(),
            parallel.1.as_secs_f64(),
            sequential.1.as_secs_f64() / parallel.1.as_secs_f64()
        );
        Ok(())
    }

    fn draw<T>(&self, name: &str, value: &Delayed<T>) -> Result<()> {
        let Some(folder) = &self.pictures else {
            return Ok(());
        };
        #[cfg(feature = "render")]
        {
            std::fs::create_dir_all(folder)?;
            value.visualize(folder.join(format!("{name}.png")))?;
        }
        #[cfg(not(feature = "render"))]
        {
            let _ = (folder, value, name);
            return Err("--pictures needs the `render` feature".into());
        }
        #[allow(unreachable_code)]
        Ok(())
    }
}

fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, Duration)> {
    let started = Instant::now();
    let value = f()?;
    Ok((value, started.elapsed()))
}

/// xorshift64*: the examples need reproducible noise, not a random-number crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    fn float(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [low, high).
    fn int(&mut self, low: i64, high: i64) -> i64 {
        low + (self.next() % (high - low) as u64) as i64
    }
}

fn example_1(t: &'static Tutorial) -> Result<()> {
    let square = move |x: i64| {
        t.sleep(1.0);
        x * x
    };
    let sequential = timed(|| Ok(square(3) + square(4)))?;
    let options = Options::threads(SLEEPING_THREADS);
    let mut graph = None;
    let parallel = timed(|| {
        let square = delayed(square).named("square");
        let res = square.call(3) + square.call(4);
        let value = res.compute_with(&options)?;
        graph = Some(res);
        Ok(value)
    })?;
    t.report("ex1 square(3) + square(4)", sequential, parallel)?;
    t.draw("example1", &graph.expect("built above"))
}

fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    sxy / (sxx * syy).sqrt()
}

fn mean(values: Vec<f64>) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

fn example_2(t: &'static Tutorial) -> Result<()> {
    let mut rng = Rng(0x5EED_0002);
    let x: Vec<Vec<f64>> = (0..10)
        .map(|_| (0..1000).map(|_| rng.float()).collect())
        .collect();
    let corr = move |a: Vec<f64>, b: Vec<f64>| {
        t.sleep(1.0);
        pearson(&a, &b)
    };
    let sequential = timed(|| {
        let correlations: Vec<f64> = x
            .iter()
            .map(|row| corr(x[0].clone(), row.clone()))
            .collect();
        Ok(mean(correlations))
    })?;
    let options = Options::threads(SLEEPING_THREADS);
    let mut graph = None;
    let parallel = timed(|| {
        let corr = delayed(corr).named("corr");
        // The first row goes into the graph once rather than into each call, as dask does with
        // large arguments.
        let first = Delayed::value(x[0].clone());
        let correlations: Vec<Delayed<f64>> =
            x.iter().map(|row| corr.call(&first, row.clone())).collect();
        let avg_corr = delayed(mean).call(correlations);
        let value = avg_corr.compute_with(&options)?;
        graph = Some(avg_corr);
        Ok(value)
    })?;
    t.report("ex2 mean correlation with row 0", sequential, parallel)?;
    t.draw("example2", &graph.expect("built above"))
}

fn example_3(t: &'static Tutorial) -> Result<()> {
    let square = move |x: i64| {
        t.sleep(1.0);
        x * x
    };
    let power_3 = move |x: i64| {
        t.sleep(1.0);
        x * x * x
    };
    let sequential = timed(|| {
        let parts = (1..=10).map(|i| if i % 2 == 0 { square(i) } else { power_3(i) });
        Ok(parts.sum::<i64>())
    })?;
    let options = Options::threads(SLEEPING_THREADS);
    let mut graph = None;
    let parallel = timed(|| {
        let (square, power_3) = (
            delayed(square).named("square"),
            delayed(power_3).named("power_3"),
        );
        let final_list: Vec<Delayed<i64>> = (1..=10)
            .map(|i| {
                if i % 2 == 0 {
                    square.call(i)
                } else {
                    power_3.call(i)
                }
            })
            .collect();
        let res: Delayed<i64> = final_list.into_iter().sum();
        let value = res.compute_with(&options)?;
        graph = Some(res);
        Ok(value)
    })?;
    t.report("ex3 sum of squares and cubes", sequential, parallel)?;
    t.draw("example3", &graph.expect("built above"))
}

const DAYS: u32 = 30;
const READINGS_PER_DAY: u32 = 17_280;

/// One CSV file per day of January 2020, a reading every 5 seconds, temperatures in [1, 50).
fn write_temperatures(folder: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(folder)?;
    let mut rng = Rng(0x5EED_0004);
    (1..=DAYS)
        .map(|day| {
            let path = folder.join(format!("1-{day}-2020.csv"));
            let mut writer = csv::Writer::from_path(&path)?;
            writer.write_record(["", "Temp"])?;
            for i in 0..READINGS_PER_DAY {
                let seconds = i * 5;
                let stamp = format!(
                    "2020-01-{day:02} {:02}:{:02}:{:02}",
                    seconds / 3600,
                    seconds / 60 % 60,
                    seconds % 60
                );
                writer.write_record([stamp, rng.int(1, 50).to_string()])?;
            }
            writer.flush()?;
            Ok(path)
        })
        .collect()
}

fn calc_mean(path: PathBuf) -> std::result::Result<f64, belated::TaskError> {
    let mut reader = csv::Reader::from_path(&path)?;
    let mut record = csv::StringRecord::new();
    let (mut sum, mut count) = (0.0, 0usize);
    while reader.read_record(&mut record)? {
        sum += record
            .get(1)
            .ok_or_else(|| format!("{}: a row has no Temp column", path.display()))?
            .parse::<f64>()?;
        count += 1;
    }
    Ok(sum / count as f64)
}

fn example_4(t: &'static Tutorial) -> Result<()> {
    let folder = std::env::temp_dir().join(format!("belated-tutorial-{}", std::process::id()));
    let files = write_temperatures(&folder)?;
    let sequential = timed(|| {
        let means = files
            .iter()
            .map(|f| calc_mean(f.clone()).map_err(|e| e.to_string()));
        Ok(mean(means.collect::<std::result::Result<_, _>>()?))
    });
    let mut graph = None;
    let parallel = timed(|| {
        let calc_mean = delayed(calc_mean);
        let avg_temp_per_day: Vec<Delayed<f64>> = files
            .iter()
            .map(|f| calc_mean.try_call(f.clone()))
            .collect();
        let avg_temp = delayed(mean).call(avg_temp_per_day);
        let value = avg_temp.compute()?;
        graph = Some(avg_temp);
        Ok(value)
    });
    std::fs::remove_dir_all(&folder)?;
    t.report("ex4 mean of 30 daily CSV means", sequential?, parallel?)?;
    t.draw("example4", &graph.expect("built above"))
}

fn example_5(t: &'static Tutorial) -> Result<()> {
    let total_func = move |x: Vec<i64>| {
        t.sleep(0.5);
        x.iter().filter(|i| *i % 2 == 0).sum::<i64>()
    };
    let count_func = move |x: Vec<i64>| {
        t.sleep(0.5);
        x.iter().filter(|i| *i % 2 == 0).count() as i64
    };
    let mut rng = Rng(0x5EED_0005);
    let arrays: Vec<Vec<i64>> = (0..10)
        .map(|_| (0..1000).map(|_| rng.int(1, 100)).collect())
        .collect();
    let sequential = timed(|| {
        let totals: Vec<i64> = arrays.iter().map(|x| total_func(x.clone())).collect();
        let counts: Vec<i64> = arrays.iter().map(|x| count_func(x.clone())).collect();
        Ok(totals.iter().sum::<i64>() as f64 / counts.iter().sum::<i64>() as f64)
    })?;
    let options = Options::threads(SLEEPING_THREADS);
    let mut graph = None;
    let parallel = timed(|| {
        let (total_func, count_func) = (
            delayed(total_func).named("total_func"),
            delayed(count_func).named("count_func"),
        );
        let (mut totals_orig, mut counts_orig) = (Vec::new(), Vec::new());
        for x in &arrays {
            totals_orig.push(total_func.call(x.clone()));
            counts_orig.push(count_func.call(x.clone()));
        }
        let (totals, counts) = options.compute((&totals_orig, &counts_orig))?;
        graph = Some((totals_orig, counts_orig));
        Ok(totals.iter().sum::<i64>() as f64 / counts.iter().sum::<i64>() as f64)
    })?;
    t.report("ex5 mean of the even numbers", sequential, parallel)?;
    let (totals_orig, counts_orig) = graph.expect("built above");
    let both: Delayed<Vec<i64>> = totals_orig.iter().chain(&counts_orig).collect();
    t.draw("example5", &both)
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut tutorial = Tutorial {
        second: Duration::from_secs(1),
        pictures: None,
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => tutorial.second = Duration::from_millis(100),
            "--pictures" => {
                tutorial.pictures = Some(args.next().ok_or("--pictures needs a folder")?.into())
            }
            other => {
                return Err(
                    format!("unknown argument {other:?}; use --quick, --pictures DIR").into(),
                )
            }
        }
    }
    // The task closures borrow the settings for the whole run; leaking one small struct is simpler
    // than threading an Arc through every closure.
    let t: &'static Tutorial = Box::leak(Box::new(tutorial));
    println!(
        "dask.delayed tutorial in Rust: 1 s of work = {:?}; sleeping examples on {SLEEPING_THREADS} threads, \
         CSV example on {} (one per core)",
        t.second,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    example_1(t)?;
    example_2(t)?;
    example_3(t)?;
    example_4(t)?;
    example_5(t)?;
    println!("all 5 examples match their sequential versions");
    Ok(())
}
