//! `belated._belated`: the Python face of the engine. Kept thin: task payloads, argument templates and
//! keys ([`task`]), the `Delayed` type ([`delayed`]), running graphs ([`compute`]), the graph in dask's
//! spec ([`export`]), what runs around every task ([`host`]), dask's own graphs on the engine
//! ([`dask_graph`]) and the one mapping of engine errors to exceptions ([`errors`]).
//!
//! The build side is layered, each module using only those before it: [`task`] (payloads, knows no
//! `Delayed`) → [`export`] (dask's legacy spec of a plan) → [`delayed`] (the type) → [`collect`]
//! (arguments into templates) and [`token`] (keys of pure calls) → [`pickle`] → [`methods`] (the
//! Python methods of `Delayed` and `delayed()`). [`gil`], which offers the interpreter to other threads
//! during long stretches of work, is a leaf that any of them may use.

mod cluster;
mod codec;
mod collect;
mod compute;
mod dashboard;
mod dask_get;
mod dask_graph;
mod delayed;
mod diagnostics;
mod errors;
mod export;
mod gil;
mod graph_manipulation;
mod held;
mod host;
mod methods;
mod pickle;
mod plain_call;
mod render;
mod task;
mod token;

use pyo3::prelude::*;

#[pymodule]
fn _belated(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    // The package's version as maturin gives it to the wheel (pyproject's version is Cargo's): read
    // here, `import belated` does not load importlib.metadata (a fifth of its import).
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<delayed::Delayed>()?;
    m.add_class::<cluster::Cluster>()?;
    m.add_class::<cluster::Kept>()?;
    m.add_class::<diagnostics::ComputeState>()?;
    m.add_class::<diagnostics::TaskGraph>()?;
    m.add_function(wrap_pyfunction!(methods::delayed, m)?)?;
    m.add_function(wrap_pyfunction!(methods::set_default_pure, m)?)?;
    m.add_function(wrap_pyfunction!(compute::compute, m)?)?;
    m.add_function(wrap_pyfunction!(cluster::on_pool_thread, m)?)?;
    m.add_function(wrap_pyfunction!(compute::compute_with, m)?)?;
    m.add_function(wrap_pyfunction!(dask_get::run_dask_graph, m)?)?;
    m.add_function(wrap_pyfunction!(dask_graph::dask_graph_delayed, m)?)?;
    m.add_function(wrap_pyfunction!(compute::shutdown, m)?)?;
    m.add_function(wrap_pyfunction!(compute::forget_pools_after_fork, m)?)?;
    m.add_function(wrap_pyfunction!(errors::panic_for_tests, m)?)?;
    m.add_function(wrap_pyfunction!(pickle::rebuild, m)?)?;
    m.add_function(wrap_pyfunction!(task::reseed_keys_after_fork, m)?)?;
    m.add_function(wrap_pyfunction!(graph_manipulation::waiting, m)?)?;
    m.add_function(wrap_pyfunction!(graph_manipulation::bind, m)?)?;
    m.add_function(wrap_pyfunction!(held::held_keys, m)?)?;
    m.add_function(wrap_pyfunction!(render::draw, m)?)?;
    m.add_function(wrap_pyfunction!(dashboard::start_dashboard, m)?)?;
    m.add_function(wrap_pyfunction!(dashboard::stop_dashboard, m)?)?;
    m.add_function(wrap_pyfunction!(dashboard::dashboard_url, m)?)?;
    m.add_class::<compute::CancelToken>()?;
    m.add_function(wrap_pyfunction!(export::apply, m)?)?;
    m.add_function(wrap_pyfunction!(export::call_method, m)?)?;
    m.add("BelatedError", py.get_type::<errors::BelatedError>())?;
    m.add(
        "WorkerStartError",
        py.get_type::<errors::WorkerStartError>(),
    )?;
    m.add("CancelledError", py.get_type::<errors::CancelledError>())?;
    m.add("InternalError", py.get_type::<errors::InternalError>())?;
    m.add(
        "ComputeTimeoutError",
        py.get_type::<errors::ComputeTimeoutError>(),
    )?;
    m.add("WorkerLostError", py.get_type::<errors::WorkerLostError>())?;
    m.add("RemoteError", py.get_type::<errors::RemoteError>())?;
    Ok(())
}
