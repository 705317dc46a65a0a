//! Tokens of pure calls made without Python when every part is a plain value: operators, `[]` and
//! attribute access tokenize at every use, so they must cost little more than an impure call.
//!
//! The parts (the callable's identity, then the arguments) are written in a tagged, length-prefixed
//! encoding, so that different parts never write the same bytes, and hashed with fixed keys: equal calls
//! get equal tokens in every process of one build. A call with any other part (a function, an array, a
//! keyword argument...) goes to `belated._tokenize.call_token`; a given call always takes the same path,
//! so equal calls still get equal tokens.

use std::hash::{DefaultHasher, Hasher};
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PySlice, PyString, PyTuple};

use crate::delayed::Delayed;

use crate::task::{Key, PyTask, TaskNode};

/// Nesting deeper than this is left to Python, which handles any depth.
const MAX_DEPTH: usize = 8;

/// A part of what identifies a callable, before its arguments.
pub(crate) enum Part<'a, 'py> {
    Text(&'static str),
    /// `operator.<name>`.
    Operator(&'static str),
    /// A method of this name, called on the object that follows.
    Method(&'a Bound<'py, PyString>),
    /// A task, by its key (the `delayed(func)` called, or the object of a method call).
    Node(&'a TaskNode),
    Object(Bound<'py, PyAny>),
}

impl<'py> Part<'_, 'py> {
    /// What Python's tokenizer receives for this part.
    fn to_object(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        match self {
            Part::Text(text) => PyString::new(py, text).into_any(),
            Part::Operator(name) => PyString::new(py, &format!("operator.{name}")).into_any(),
            Part::Method(name) => PyString::new(py, &format!(".{name}")).into_any(),
            Part::Node(node) => node.payload().key.to_object(py, node.payload()),
            Part::Object(object) => object.clone(),
        }
    }

    fn encode(&self, out: &mut Vec<u8>) -> bool {
        match self {
            Part::Text(text) => bytes(out, 4, text.as_bytes()),
            Part::Operator(name) => bytes(out, 12, name.as_bytes()),
            Part::Method(name) => match name.to_str() {
                Ok(name) => bytes(out, 13, name.as_bytes()),
                Err(_) => return false,
            },
            Part::Node(node) => encode_key(out, node.payload()),
            Part::Object(object) => return encode(out, object, 0),
        }
        true
    }
}

/// The token of a pure call of what `head` identifies on `args` and `kwargs`.
pub(crate) fn call_token<'py>(
    py: Python<'py>,
    head: &[Part<'_, 'py>],
    args: &Bound<'py, PyTuple>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<String> {
    let no_kwargs = kwargs.is_none_or(|k| k.is_empty());
    let mut encoding = Vec::with_capacity(64);
    if no_kwargs
        && head.iter().all(|part| part.encode(&mut encoding))
        && args.iter().all(|arg| encode(&mut encoding, &arg, 0))
    {
        return Ok(digest(&encoding));
    }
    static CALL_TOKEN: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let call_token = CALL_TOKEN.import(py, "belated._tokenize", "call_token")?;
    let mut parts: Vec<_> = head.iter().map(|part| part.to_object(py)).collect();
    parts.extend(args.iter());
    call_token
        .call1((PyTuple::new(py, parts)?, kwargs))?
        .extract()
}

/// A task's key, without making its text: a unique key's text would need its function's name, which
/// costs Python attribute lookups, and its id and salt identify it as well.
fn encode_key(out: &mut Vec<u8>, task: &PyTask) {
    match &task.key {
        Key::Named(name) => bytes(out, 6, name.as_bytes()),
        Key::Object(object) => bytes(out, 7, object.text().as_bytes()),
        Key::Unique { id, salt } => {
            out.push(11);
            out.extend(id.to_le_bytes());
            out.extend(salt.to_le_bytes());
        }
    }
}

/// Appends `obj`'s encoding; false when it is not a plain value.
fn encode(out: &mut Vec<u8>, obj: &Bound<'_, PyAny>, depth: usize) -> bool {
    if obj.is_none() {
        out.push(0);
    } else if let Ok(flag) = obj.cast_exact::<PyBool>() {
        out.extend([1, flag.is_true() as u8]);
    } else if let Ok(int) = obj.cast_exact::<PyInt>() {
        let Ok(value) = int.extract::<i64>() else {
            return false;
        };
        out.push(2);
        out.extend(value.to_le_bytes());
    } else if let Ok(float) = obj.cast_exact::<PyFloat>() {
        out.push(3);
        out.extend(float.value().to_bits().to_le_bytes());
    } else if let Ok(text) = obj.cast_exact::<PyString>() {
        let Ok(text) = text.to_str() else {
            return false;
        };
        bytes(out, 4, text.as_bytes());
    } else if let Ok(data) = obj.cast_exact::<PyBytes>() {
        bytes(out, 5, data.as_bytes());
    } else if let Ok(delayed) = obj.cast::<Delayed>() {
        encode_key(out, delayed.get().node().payload());
    } else if depth >= MAX_DEPTH {
        return false;
    } else if let Ok(tuple) = obj.cast_exact::<PyTuple>() {
        length(out, 8, tuple.len());
        return tuple.iter().all(|item| encode(out, &item, depth + 1));
    } else if let Ok(list) = obj.cast_exact::<PyList>() {
        length(out, 9, list.len());
        return list.iter().all(|item| encode(out, &item, depth + 1));
    } else if let Ok(slice) = obj.cast_exact::<PySlice>() {
        out.push(10);
        return ["start", "stop", "step"].iter().all(|name| {
            slice
                .getattr(*name)
                .is_ok_and(|bound| encode(out, &bound, depth + 1))
        });
    } else {
        return false;
    }
    true
}

fn length(out: &mut Vec<u8>, tag: u8, len: usize) {
    out.push(tag);
    out.extend((len as u64).to_le_bytes());
}

fn bytes(out: &mut Vec<u8>, tag: u8, data: &[u8]) {
    length(out, tag, data.len());
    out.extend_from_slice(data);
}

/// 128 bits as 32 hex digits, like dask's tokens. `DefaultHasher::new()` has fixed keys. Written by
/// hand: formatting is a large part of a pure call's cost.
fn digest(encoding: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let half = |lane: u8| {
        let mut hasher = DefaultHasher::new();
        hasher.write_u8(lane);
        hasher.write(encoding);
        hasher.finish()
    };
    let mut text = String::with_capacity(32);
    for value in [half(0), half(1)] {
        for shift in (0..16).rev() {
            text.push(HEX[(value >> (4 * shift)) as usize & 0xf] as char);
        }
    }
    text
}

/// `<prefix>-<token>`, the key of a pure call.
pub(crate) fn key_text(prefix: &str, token: &str) -> Arc<str> {
    let mut key = String::with_capacity(prefix.len() + 1 + token.len());
    key.push_str(prefix);
    key.push('-');
    key.push_str(token);
    key.into()
}
