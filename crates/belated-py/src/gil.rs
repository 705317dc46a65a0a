//! Long stretches of Rust work done while holding the interpreter offer it to other Python threads as
//! the eval loop would, so that a heartbeat thread, a progress bar or a server keeps running while a
//! million arguments are collected, built or released. A leaf module.
//!
//! CPython's eval loop lets a thread that has waited one switch interval (`sys.getswitchinterval()`,
//! 5 ms) ask for the interpreter, and hands it over when it next checks; Rust code (and a task that is
//! a builtin function) runs no bytecode and never checks. So at most every [`SWITCH_CHECK`], a thread
//! runs a no-op Python function, whose entry is such a check: other threads get the interpreter as
//! they would from Python code, and nothing is paid when nobody asks.

use std::cell::Cell;
use std::time::Duration;

use pyo3::exceptions::PyKeyboardInterrupt;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyModule;

/// How often (in nanoseconds) a thread running tasks lets CPython hand the interpreter to a thread
/// that asked for it: well under the switch interval, so a waiting thread runs within about one
/// interval.
const SWITCH_CHECK_NS: u64 = 1_000_000;

/// The clock read before every task ([`offer_between_tasks`]): one memory read (11 ns on the
/// development VM), where the precise clock reads the TSC (58 ns, a fifth of a trivial task's cost).
/// Its ticks are 1 to 4 ms apart (by kernel), so the check is due once a tick: still under the 5 ms
/// switch interval. Both clocks count from boot, so one thread's checks can mix them.
#[cfg(target_os = "linux")]
const COARSE_CLOCK: libc::clockid_t = libc::CLOCK_MONOTONIC_COARSE;
#[cfg(not(target_os = "linux"))]
const COARSE_CLOCK: libc::clockid_t = libc::CLOCK_MONOTONIC;

pub(crate) fn now_ns(clock: libc::clockid_t) -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write to, and the clock exists on this system.
    unsafe { libc::clock_gettime(clock, &mut now) };
    (now.tv_sec as u64) * 1_000_000_000 + now.tv_nsec as u64
}

thread_local! {
    /// When this thread last offered the interpreter ([`now_ns`]); 0 before it first did.
    static LAST_SWITCH_CHECK: Cell<u64> = const { Cell::new(0) };
}

/// Whether this thread has held the interpreter for a [`SWITCH_CHECK_NS`] since it last offered it.
fn switch_due(now: u64) -> bool {
    LAST_SWITCH_CHECK.with(|last| {
        let due = now.saturating_sub(last.get()) >= SWITCH_CHECK_NS;
        if due {
            last.set(now);
        }
        due
    })
}

thread_local! {
    /// When this thread last started a task, on the coarse clock ([`offer_between_tasks`]).
    static TASK_STARTED: Cell<u64> = const { Cell::new(0) };
}

/// [`let_other_threads_run`] before a task, on the coarse clock ([`COARSE_CLOCK`]): a compute of
/// a million trivial tasks reads it a million times. Marks the task's start ([`since_task_start`]),
/// after the interpreter came back if it was handed over.
pub(crate) fn offer_between_tasks(py: Python<'_>) -> PyResult<()> {
    let now = now_ns(COARSE_CLOCK);
    TASK_STARTED.with(|started| started.set(now));
    if !switch_due(now) {
        return Ok(());
    }
    let switched = switch(py);
    TASK_STARTED.with(|started| started.set(now_ns(COARSE_CLOCK)));
    switched
}

/// How long since this thread started its last task ([`offer_between_tasks`]), on the coarse clock:
/// to within its tick (1 to 4 ms).
pub(crate) fn since_task_start() -> Duration {
    let started = TASK_STARTED.with(Cell::get);
    Duration::from_nanos(now_ns(COARSE_CLOCK).saturating_sub(started))
}

/// Gives the interpreter to a thread that asked for it, if this thread has held it for a while.
pub(crate) fn let_other_threads_run(py: Python<'_>) -> PyResult<()> {
    if !switch_due(now_ns(libc::CLOCK_MONOTONIC)) {
        return Ok(());
    }
    switch(py)
}

/// Runs the no-op Python function whose entry checks whether another thread asked for the interpreter.
fn switch(py: Python<'_>) -> PyResult<()> {
    static SWITCH: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let switch = SWITCH.get_or_try_init(py, || {
        PyModule::from_code(
            py,
            c"def switch():\n    pass\n",
            c"<belated switch>",
            c"belated_switch",
        )?
        .getattr("switch")
        .map(Bound::unbind)
    })?;
    switch.call0(py)?;
    Ok(())
}

/// How many items of work (arguments collected, built or released) pass between looks at the clock:
/// each takes well under a microsecond, so this is far below a switch interval and costs nothing seen.
pub(crate) const ITEMS_PER_CHECK: usize = 1024;

thread_local! {
    static ITEMS: Cell<u32> = const { Cell::new(0) };
}

/// Counts one item of work done while holding the interpreter; true every [`ITEMS_PER_CHECK`] items.
fn count_item() -> bool {
    let count = ITEMS.with(|items| {
        let count = items.get().wrapping_add(1);
        items.set(count);
        count
    });
    count as usize % ITEMS_PER_CHECK == 0
}

/// Counts one item of work done while holding the interpreter, and offers it to other threads when due.
pub(crate) fn pace(py: Python<'_>) -> PyResult<()> {
    if count_item() {
        let_other_threads_run(py)
    } else {
        Ok(())
    }
}

/// [`pace`] for a deallocation, which can return no exception ([`hand_over`]): CPython frees a list
/// of a million objects without ever checking whether another thread asked for the interpreter, so a
/// type whose objects come by the million counts its own deallocations.
pub(crate) fn pace_dealloc(py: Python<'_>) {
    if count_item() {
        hand_over(py);
    }
}

/// Drops `items` (Python objects among them), offering the interpreter to other threads as it goes:
/// releasing a million results runs a million deallocations.
pub(crate) fn release<T>(py: Python<'_>, items: impl IntoIterator<Item = T>) -> PyResult<()> {
    for item in items {
        drop(item);
        pace(py)?;
    }
    Ok(())
}

/// [`let_other_threads_run`] for code that can return no exception, a deallocation. (Letting go of the
/// interpreter instead would not do: a waiting thread asks for it only after a switch interval with no
/// switch, and each release and retake counts as one, so it would never ask.) A `KeyboardInterrupt`
/// its signal handler raised is handed back to the interpreter, to be raised at its next check; any
/// other exception is reported as unraisable, as one in a `__del__` is.
pub(crate) fn hand_over(py: Python<'_>) {
    if let Err(error) = let_other_threads_run(py) {
        if error.is_instance_of::<PyKeyboardInterrupt>(py) {
            // SAFETY: this thread holds the interpreter; the call only flags a pending SIGINT.
            unsafe { pyo3::ffi::PyErr_SetInterrupt() };
        } else {
            error.write_unraisable(py, None);
        }
    }
}
