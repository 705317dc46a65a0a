//! The codec of worker processes: Python values to the frames `belated._worker` reads and back
//! (cloudpickle, pickle protocol 5 with out-of-band buffers), and the check, before a computation
//! starts, that everything it would send can be sent.
//!
//! Large out-of-band buffers (`_worker.SHARE_FROM` and up, on Linux) are copied once into a
//! shared-memory [`Segment`] when pickled, and travel as its descriptor; a reply's segments are
//! mapped, not copied, so an array that comes back is built on the worker's memory.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use belated_cluster::wire::{Frame, Segment};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyInt, PyList};

use crate::errors::BelatedError;
use crate::task::{is_plain_scalar, Call};

pub(crate) fn helper<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<PyAny>>,
    name: &str,
) -> PyResult<Bound<'py, PyAny>> {
    Ok(cell.import(py, "belated._worker", name)?.clone())
}

/// Pickles `call` into frames: the pickle, then its out-of-band buffers.
pub(crate) fn frames_of(py: Python<'_>, call: &Call<'_>) -> PyResult<Vec<Frame>> {
    static DUMPS_CALL: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let frames =
        helper(py, &DUMPS_CALL, "dumps_call")?.call1((&call.func, &call.args, &call.kwargs))?;
    frames_from(py, &frames)
}

/// The frames `_worker`'s picklers return (bytes, buffers of out-of-band data, and `Segment`s whose
/// descriptors this takes over), as frames to send.
pub(crate) fn frames_from(py: Python<'_>, frames: &Bound<'_, PyAny>) -> PyResult<Vec<Frame>> {
    static SEGMENT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let segment_type = helper(py, &SEGMENT, "Segment")?;
    frames
        .cast::<PyList>()?
        .iter()
        .map(|frame| {
            if let Ok(bytes) = frame.cast::<PyBytes>() {
                return Ok(Frame::Bytes(bytes.as_bytes().to_vec()));
            }
            if frame.is_instance(&segment_type)? {
                let fd: i32 = frame.call_method0("detach")?.extract()?;
                // SAFETY: `detach` handed the descriptor over; nothing else closes it.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                return Ok(Frame::Segment(Arc::new(Segment::new(fd)?)));
            }
            // The buffer protocol is not in the stable ABI before 3.11, so small out-of-band
            // buffers are read through `bytes()`: one more copy of each.
            let bytes = py.get_type::<PyBytes>().call1((&frame,))?;
            Ok(Frame::Bytes(bytes.cast::<PyBytes>()?.as_bytes().to_vec()))
        })
        .collect()
}

/// Frames as `_worker.loads` takes them: bytes, and segments mapped (copy-on-write) in place.
pub(crate) fn python_frames<'py>(
    py: Python<'py>,
    frames: &[Frame],
) -> PyResult<Bound<'py, PyList>> {
    static MAP_SEGMENT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let list = PyList::empty(py);
    for frame in frames {
        match frame {
            Frame::Bytes(bytes) => list.append(PyBytes::new(py, bytes))?,
            // The mapping holds its own duplicate of the descriptor: the value outlives the frame.
            Frame::Segment(segment) => list.append(
                helper(py, &MAP_SEGMENT, "map_segment")?
                    .call1((PyInt::new(py, segment.fd().as_raw_fd()), segment.len()))?,
            )?,
        }
    }
    Ok(list)
}

/// `_worker.INT_REPLY`: the first byte of a reply that is an int rather than a pickle.
const INT_REPLY: u8 = b'i';

/// The int of a reply in `_worker`'s form for an int result (with no log records), read without the
/// interpreter: a kept result's reply is its size. `None` for any other reply.
pub(crate) fn int_reply(reply: &[Frame]) -> Option<i64> {
    match reply {
        [Frame::Bytes(bytes)] if bytes.first() == Some(&INT_REPLY) => {
            Some(i64::from_le_bytes(bytes[1..].try_into().ok()?))
        }
        _ => None,
    }
}

/// A worker's reply: the value, or the task's own exception with the worker's traceback as a note.
pub(crate) fn decode_reply<'py>(py: Python<'py>, reply: &[Frame]) -> PyResult<Bound<'py, PyAny>> {
    static LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    if let Some(int) = int_reply(reply) {
        return Ok(PyInt::new(py, int).into_any());
    }
    let frames = python_frames(py, reply)?;
    let reply = helper(py, &LOADS, "loads_reply")?.call1((frames,))?;
    if reply.get_item(0)?.is_truthy()? {
        return reply.get_item(1);
    }
    let error = PyErr::from_value(reply.get_item(1)?);
    let remote_traceback: String = reply.get_item(2)?.extract()?;
    if !remote_traceback.is_empty() {
        // The exception is the task's own; its frames ran in the worker, so they come as a note.
        crate::errors::add_note(
            py,
            &error,
            format!("traceback in the worker process:\n{remote_traceback}"),
        );
    }
    Err(error)
}

/// Checks, before anything runs, that every task's function and literal arguments can be pickled, so
/// that an unpicklable object is reported with its task instead of halfway through a computation.
/// The tasks `kept` says a worker already holds the result of are not sent, and not checked.
pub(crate) fn check_picklable(
    py: Python<'_>,
    nodes: &[std::sync::Arc<crate::task::TaskNode>],
    kept: impl Fn(usize) -> bool,
) -> PyResult<()> {
    use crate::task::{Arg, Op};
    static DUMPS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let dumps = helper(py, &DUMPS, "dumps")?;
    let mut checked = rustc_hash::FxHashSet::default();
    for (index, node) in nodes.iter().enumerate() {
        if kept(index) {
            continue;
        }
        let task = node.payload();
        let (func, args) = match &task.op {
            Op::Value(_) => continue,
            Op::Call { func, args, .. } => (Some(func), args),
            Op::Method { args, .. } => (None, args),
        };
        for arg in func.into_iter().chain(args.iter()) {
            let Arg::Value(object) = arg else { continue };
            if !checked.insert(object.as_ptr() as usize) || is_plain_scalar(object.bind(py)) {
                continue;
            }
            if let Err(error) = dumps.call1((object,)) {
                return Err(BelatedError::new_err(format!(
                    "task {} cannot be sent to a worker process: {} cannot be pickled ({error}); make it \
                     picklable, or use scheduler='threads'",
                    task.key_string(py),
                    object.bind(py).repr().map_or_else(|_| "an argument".to_string(), |r| r.to_string()),
                )));
            }
        }
    }
    Ok(())
}
