//! Calls of plain arguments pickled here rather than by `_worker.dumps_call`: most calls of a graph of
//! small tasks pass ints, floats, strings and results kept in the worker to a function sent before,
//! and going through the interpreter for each cost the parent more than the worker's run of the call.
//!
//! Invariants:
//! - A call's frames are what `dumps_call` makes of it: the function's pickle (learned from
//!   `dumps_call`'s first call of it in this computation), then the pickle of
//!   `(computation, log levels, args, None)` as protocol 5 writes it, less the frame and memo opcodes
//!   that a reader does not need. The worker unpickles both alike.
//! - Only what `dumps_call` keeps for the computation is learned (a function or builtin, whose pickle
//!   does not change while its computation runs), and only a pickle small enough to keep per call.
//! - Any argument or function it does not know how to write sends the call through `dumps_call`.

use belated_cluster::wire::Frame;
use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyBytes, PyFloat, PyInt, PyString, PyTuple, PyType};
use rustc_hash::FxHashMap;
use std::sync::OnceLock;

use crate::codec::helper;
use crate::task::Call;

/// The largest function pickle kept: larger ones (a function by value holding large globals) go
/// through `dumps_call`, whose cache bounds the bytes it keeps.
const KEPT_FUNCTION_BYTES: usize = 64 * 1024;

// Pickle protocol 5 opcodes (`pickletools`).
const PROTO: u8 = 0x80;
const MARK: u8 = b'(';
const TUPLE: u8 = b't';
const EMPTY_TUPLE: u8 = b')';
const TUPLE1: u8 = 0x85;
const TUPLE2: u8 = 0x86;
const TUPLE3: u8 = 0x87;
const STOP: u8 = b'.';
const NONE: u8 = b'N';
const NEWTRUE: u8 = 0x88;
const NEWFALSE: u8 = 0x89;
const BININT1: u8 = b'K';
const BININT2: u8 = b'M';
const BININT: u8 = b'J';
const LONG1: u8 = 0x8a;
const BINFLOAT: u8 = b'G';
const SHORT_BINUNICODE: u8 = 0x8c;
const BINUNICODE: u8 = b'X';
const SHORT_BINBYTES: u8 = b'C';
const BINBYTES: u8 = b'B';
const STACK_GLOBAL: u8 = 0x93;
const REDUCE: u8 = b'R';

/// A learned function, held so that its address is not reused, and its pickle.
type Learned = (Py<PyAny>, Vec<u8>);

/// The calls of one computation that are pickled here, and the function pickles they use.
#[derive(Default)]
pub(crate) struct PlainCalls {
    /// The pickle's opening up to the arguments: `(computation, log levels, `.
    opening: OnceLock<Vec<u8>>,
    /// Each learned function, by its address.
    functions: Mutex<FxHashMap<usize, Learned>>,
}

impl PlainCalls {
    /// `call`'s frames, if its function was learned and its arguments are all plain.
    pub(crate) fn frames(&self, call: &Call<'_>) -> Option<Vec<Frame>> {
        if call
            .kwargs
            .as_ref()
            .is_some_and(|kwargs| !kwargs.is_empty())
        {
            return None;
        }
        let opening = self.opening.get()?;
        let function = self
            .functions
            .lock()
            .get(&(call.func.as_ptr() as usize))?
            .1
            .clone();
        let mut pickle = opening.clone();
        write_tuple(&mut pickle, &call.args)?;
        pickle.extend([NONE, TUPLE, STOP]);
        Some(vec![Frame::Bytes(function), Frame::Bytes(pickle)])
    }

    /// Learns the function pickle of `frames`, `dumps_call`'s of `call`, if it is one to keep.
    pub(crate) fn learn(&self, py: Python<'_>, call: &Call<'_>, frames: &[Frame]) -> PyResult<()> {
        static KEPT_TYPES: PyOnceLock<[usize; 2]> = PyOnceLock::new();
        let [Frame::Bytes(function), ..] = frames else {
            return Ok(());
        };
        // An empty function frame says the function went with the arguments (it holds buffers).
        if function.is_empty() || function.len() > KEPT_FUNCTION_BYTES {
            return Ok(());
        }
        let kept = KEPT_TYPES.get_or_try_init(py, || -> PyResult<_> {
            let types = py.import("types")?;
            let type_address = |name| -> PyResult<usize> {
                Ok(types.getattr(name)?.cast_into::<PyType>()?.as_type_ptr() as usize)
            };
            Ok([
                type_address("FunctionType")?,
                type_address("BuiltinFunctionType")?,
            ])
        })?;
        if !kept.contains(&(call.func.get_type_ptr() as usize)) {
            return Ok(());
        }
        if self.opening.get().is_none() {
            // What `dumps_call` just read: the computation's, for the rest of it.
            let worker = py.import("belated._worker")?;
            let computation: i64 = worker.getattr("_computation")?.extract()?;
            let levels = worker.getattr("_log_levels")?;
            let mut opening = vec![PROTO, 5, MARK];
            write_int(&mut opening, computation);
            if write_bytes(&mut opening, levels.cast::<PyBytes>()?.as_bytes()).is_none() {
                return Ok(());
            }
            // A race with another thread learning at once writes the same opening.
            let _ = self.opening.set(opening);
        }
        self.functions.lock().insert(
            call.func.as_ptr() as usize,
            (call.func.clone().unbind(), function.clone()),
        );
        Ok(())
    }
}

/// Writes `tuple` if all its items are plain: `None` if one is not.
fn write_tuple(out: &mut Vec<u8>, tuple: &Bound<'_, PyTuple>) -> Option<()> {
    let len = tuple.len();
    if len > 3 {
        out.push(MARK);
    }
    for item in tuple.iter() {
        write_plain(out, &item)?;
    }
    out.push(match len {
        0 => EMPTY_TUPLE,
        1 => TUPLE1,
        2 => TUPLE2,
        3 => TUPLE3,
        _ => TUPLE,
    });
    Some(())
}

/// Writes `value` if it is an int of 64 bits, a float, a bool, `None`, a string, bytes or a result
/// kept in the worker (`_worker.Stored`), each of its type exactly; `None` otherwise.
fn write_plain(out: &mut Vec<u8>, value: &Bound<'_, PyAny>) -> Option<()> {
    static STORED: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let py = value.py();
    if value.is_none() {
        out.push(NONE);
    } else if value.is_exact_instance_of::<PyInt>() {
        write_int(out, value.extract().ok()?);
    } else if value.is_exact_instance_of::<PyBool>() {
        out.push(if value.is_truthy().ok()? {
            NEWTRUE
        } else {
            NEWFALSE
        });
    } else if value.is_exact_instance_of::<PyFloat>() {
        out.push(BINFLOAT);
        out.extend(value.extract::<f64>().ok()?.to_be_bytes());
    } else if value.is_exact_instance_of::<PyString>() {
        // A string holding lone surrogates has no UTF-8: pickle's own way is left to it.
        write_str(out, value.cast::<PyString>().ok()?.to_str().ok()?)?;
    } else if value.is_exact_instance_of::<PyBytes>() {
        write_bytes(out, value.cast::<PyBytes>().ok()?.as_bytes())?;
    } else if value.get_type().is(helper(py, &STORED, "Stored").ok()?) {
        // As `Stored.__reduce__` pickles it: a call of `stored(id)`.
        write_str(out, "belated._worker")?;
        write_str(out, "stored")?;
        out.push(STACK_GLOBAL);
        write_int(out, value.getattr("id").ok()?.extract().ok()?);
        out.extend([TUPLE1, REDUCE]);
    } else {
        return None;
    }
    Some(())
}

fn write_int(out: &mut Vec<u8>, value: i64) {
    match value {
        0..=0xff => out.extend([BININT1, value as u8]),
        0x100..=0xffff => {
            out.push(BININT2);
            out.extend((value as u16).to_le_bytes());
        }
        _ => match i32::try_from(value) {
            Ok(value) => {
                out.push(BININT);
                out.extend(value.to_le_bytes());
            }
            Err(_) => {
                // Two's complement, little-endian, in 8 bytes: one more than needed at times, which
                // a reader does not mind.
                out.extend([LONG1, 8]);
                out.extend(value.to_le_bytes());
            }
        },
    }
}

fn write_str(out: &mut Vec<u8>, value: &str) -> Option<()> {
    write_counted(out, value.as_bytes(), SHORT_BINUNICODE, BINUNICODE)
}

fn write_bytes(out: &mut Vec<u8>, value: &[u8]) -> Option<()> {
    write_counted(out, value, SHORT_BINBYTES, BINBYTES)
}

/// `data` after its length, in one byte with `short` or four with `long`; `None` past four bytes'
/// count, which pickle's 8-byte opcodes would carry.
fn write_counted(out: &mut Vec<u8>, data: &[u8], short: u8, long: u8) -> Option<()> {
    match u8::try_from(data.len()) {
        Ok(len) => out.extend([short, len]),
        Err(_) => {
            out.push(long);
            out.extend(u32::try_from(data.len()).ok()?.to_le_bytes());
        }
    }
    out.extend_from_slice(data);
    Some(())
}
