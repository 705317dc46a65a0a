//! A task's payload: what to run, on which arguments, under which key.
//!
//! Arguments are kept as a template ([`Arg`]): plain Python objects are held as they are (never copied or
//! pickled), and every `Delayed` found inside the arguments (also inside lists, tuples, dicts, sets,
//! namedtuples, dataclasses and iterators, as dask does) becomes a reference to one of the node's
//! dependencies. A container with no `Delayed` inside is kept as the original object.
//!
//! Keys follow dask: `<function name>-<token>`. Impure tasks get a unique id whose text is only made
//! when somebody looks at the key, so building a call allocates no string.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use belated_core::{Node, Payload};
use parking_lot::Mutex;
use pyo3::exceptions::PyRecursionError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{
    PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PySet, PyString, PyTuple, PyType,
};
use rustc_hash::FxHashMap;

use crate::delayed::Delayed;

pub(crate) type TaskNode = Node<PyTask>;

/// Deeper argument nesting than this is refused with a RecursionError, as Python itself would, rather
/// than risking the native stack of a worker thread.
const MAX_NESTING: usize = 1000;

pub(crate) struct PyTask {
    pub(crate) key: Key,
    pub(crate) op: Op,
}

pub(crate) enum Key {
    Unique(u64),
    Named(Arc<str>),
}

impl Key {
    pub(crate) fn unique() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Key::Unique(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

pub(crate) type Keywords = Box<[(Py<PyString>, Arg)]>;

pub(crate) enum Op {
    /// Evaluates the template itself: a literal, or a container of other tasks' results.
    Value(Arg),
    Call {
        func: Arg,
        args: Box<[Arg]>,
        kwargs: Keywords,
    },
    /// `args[0].<name>(*args[1:], **kwargs)`.
    Method {
        name: Py<PyString>,
        args: Box<[Arg]>,
        kwargs: Keywords,
    },
}

pub(crate) enum Arg {
    Value(Py<PyAny>),
    /// The result of the node's dependency at this index.
    Dep(u32),
    List(Box<[Arg]>),
    Tuple(Box<[Arg]>),
    Set(Box<[Arg]>),
    Dict(Box<[(Arg, Arg)]>),
    /// A namedtuple (`ty(*args)`) or dataclass (`ty(**keywords)`) rebuilt around results.
    Construct(Box<Construct>),
}

pub(crate) struct Construct {
    pub(crate) ty: Py<PyAny>,
    pub(crate) args: Box<[Arg]>,
    pub(crate) keywords: Keywords,
}

impl Payload for PyTask {
    fn merge_name(&self) -> Option<&str> {
        match &self.key {
            Key::Named(name) => Some(name),
            Key::Unique(_) => None,
        }
    }
}

/// A task's result as the engine holds it.
pub(crate) struct PyValue(pub(crate) Py<PyAny>);

impl Clone for PyValue {
    /// Engine threads clone values only while attached to the interpreter, where this is an incref.
    fn clone(&self) -> Self {
        Python::attach(|py| PyValue(self.0.clone_ref(py)))
    }
}

impl PyTask {
    pub(crate) fn key_string(&self, py: Python<'_>) -> String {
        match &self.key {
            Key::Named(name) => name.to_string(),
            Key::Unique(id) => format!("{}-{}", self.prefix(py), uuid_text(*id)),
        }
    }

    /// What pictures call the task: its function name, or a name given without its token.
    pub(crate) fn label(&self, py: Python<'_>) -> String {
        match &self.key {
            Key::Unique(_) => self.prefix(py),
            Key::Named(name) => strip_token(name).to_string(),
        }
    }

    fn prefix(&self, py: Python<'_>) -> String {
        match &self.op {
            Op::Value(Arg::Value(value)) => value_prefix(value.bind(py)),
            Op::Value(Arg::List(_)) => "list".into(),
            Op::Value(Arg::Tuple(_)) => "tuple".into(),
            Op::Value(Arg::Set(_)) => "set".into(),
            Op::Value(Arg::Dict(_)) => "dict".into(),
            Op::Value(Arg::Construct(c)) => funcname(c.ty.bind(py)),
            Op::Value(Arg::Dep(_)) => "value".into(),
            Op::Call {
                func: Arg::Value(func),
                ..
            } => funcname(func.bind(py)),
            Op::Call { .. } => "call".into(),
            Op::Method { name, .. } => name.to_string(),
        }
    }

    pub(crate) fn evaluate<'py>(
        &self,
        py: Python<'py>,
        inputs: &[PyValue],
    ) -> PyResult<Bound<'py, PyAny>> {
        match self.prepare(py, inputs)? {
            Work::Ready(value) => Ok(value),
            Work::Call(call) => call.func.call(call.args, call.kwargs.as_ref()),
        }
    }

    /// The task with its arguments built from `inputs`: a call to make, or, for a task that only
    /// assembles values (a literal, or a container of other tasks' results), its value.
    pub(crate) fn prepare<'py>(&self, py: Python<'py>, inputs: &[PyValue]) -> PyResult<Work<'py>> {
        Ok(match &self.op {
            Op::Value(arg) => Work::Ready(arg.build(py, inputs)?),
            Op::Call { func, args, kwargs } => {
                Work::Call(Call::build(py, func, args, kwargs, inputs)?)
            }
            Op::Method { name, args, kwargs } => {
                let (obj, rest) = args.split_first().expect("a method call has its object");
                Work::Call(Call {
                    func: obj.build(py, inputs)?.getattr(name.bind(py))?,
                    args: build_tuple(py, rest, inputs)?,
                    kwargs: build_kwargs(py, kwargs, inputs)?,
                })
            }
        })
    }

    /// The task as a call made entirely where its inputs are (they may be stand-ins that only mean
    /// something in a worker process): even building a container or looking up a method happens there.
    pub(crate) fn prepare_remote<'py>(
        &self,
        py: Python<'py>,
        inputs: &[PyValue],
    ) -> PyResult<Call<'py>> {
        static IDENTITY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        static CALL_METHOD: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        Ok(match &self.op {
            Op::Value(arg) => Call {
                func: IDENTITY.import(py, "belated._worker", "identity")?.clone(),
                args: PyTuple::new(py, [arg.build(py, inputs)?])?,
                kwargs: None,
            },
            Op::Call { func, args, kwargs } => Call::build(py, func, args, kwargs, inputs)?,
            Op::Method { name, args, kwargs } => {
                let (obj, rest) = args.split_first().expect("a method call has its object");
                let call_args = (
                    obj.build(py, inputs)?,
                    name.bind(py),
                    build_tuple(py, rest, inputs)?,
                    build_kwargs(py, kwargs, inputs)?,
                );
                Call {
                    func: CALL_METHOD
                        .import(py, "belated._belated", "call_method")?
                        .clone(),
                    args: call_args.into_pyobject(py)?,
                    kwargs: None,
                }
            }
        })
    }
}

pub(crate) enum Work<'py> {
    Ready(Bound<'py, PyAny>),
    Call(Call<'py>),
}

/// A call ready to make: `func(*args, **kwargs)`.
pub(crate) struct Call<'py> {
    pub(crate) func: Bound<'py, PyAny>,
    pub(crate) args: Bound<'py, PyTuple>,
    pub(crate) kwargs: Option<Bound<'py, PyDict>>,
}

impl<'py> Call<'py> {
    /// `func(*args, **kwargs)` with the templates built from `inputs`.
    fn build(
        py: Python<'py>,
        func: &Arg,
        args: &[Arg],
        kwargs: &Keywords,
        inputs: &[PyValue],
    ) -> PyResult<Self> {
        Ok(Call {
            func: func.build(py, inputs)?,
            args: build_tuple(py, args, inputs)?,
            kwargs: build_kwargs(py, kwargs, inputs)?,
        })
    }
}

fn build_tuple<'py>(
    py: Python<'py>,
    args: &[Arg],
    inputs: &[PyValue],
) -> PyResult<Bound<'py, PyTuple>> {
    let items = args
        .iter()
        .map(|arg| arg.build(py, inputs))
        .collect::<PyResult<Vec<_>>>()?;
    PyTuple::new(py, items)
}

fn build_kwargs<'py>(
    py: Python<'py>,
    kwargs: &Keywords,
    inputs: &[PyValue],
) -> PyResult<Option<Bound<'py, PyDict>>> {
    if kwargs.is_empty() {
        return Ok(None);
    }
    let dict = PyDict::new(py);
    for (name, arg) in kwargs.iter() {
        dict.set_item(name.bind(py), arg.build(py, inputs)?)?;
    }
    Ok(Some(dict))
}

impl Arg {
    pub(crate) fn build<'py>(
        &self,
        py: Python<'py>,
        inputs: &[PyValue],
    ) -> PyResult<Bound<'py, PyAny>> {
        Ok(match self {
            Arg::Value(value) => value.bind(py).clone(),
            Arg::Dep(i) => inputs[*i as usize].0.bind(py).clone(),
            Arg::List(items) => PyList::new(py, build_all(py, items, inputs)?)?.into_any(),
            Arg::Tuple(items) => build_tuple(py, items, inputs)?.into_any(),
            Arg::Set(items) => PySet::new(py, build_all(py, items, inputs)?)?.into_any(),
            Arg::Dict(pairs) => {
                let dict = PyDict::new(py);
                for (key, value) in pairs.iter() {
                    dict.set_item(key.build(py, inputs)?, value.build(py, inputs)?)?;
                }
                dict.into_any()
            }
            Arg::Construct(c) => c.ty.bind(py).call(
                build_tuple(py, &c.args, inputs)?,
                build_kwargs(py, &c.keywords, inputs)?.as_ref(),
            )?,
        })
    }

    /// Whether this is a plain object, with no dependency inside.
    pub(crate) fn is_value(&self) -> bool {
        matches!(self, Arg::Value(_))
    }
}

fn build_all<'py>(
    py: Python<'py>,
    items: &[Arg],
    inputs: &[PyValue],
) -> PyResult<Vec<Bound<'py, PyAny>>> {
    items.iter().map(|item| item.build(py, inputs)).collect()
}

/// Turns call arguments into templates, collecting the `Delayed` objects they contain as dependencies.
pub(crate) struct Collector {
    pub(crate) deps: Vec<Arc<TaskNode>>,
    traverse: bool,
}

impl Collector {
    pub(crate) fn new(traverse: bool) -> Self {
        Collector {
            deps: Vec::new(),
            traverse,
        }
    }

    pub(crate) fn dep(&mut self, node: Arc<TaskNode>) -> Arg {
        self.deps.push(node);
        Arg::Dep((self.deps.len() - 1) as u32)
    }

    pub(crate) fn arg(&mut self, obj: &Bound<'_, PyAny>) -> PyResult<Arg> {
        self.parse(obj, 0)
    }

    pub(crate) fn args(&mut self, args: &Bound<'_, PyTuple>) -> PyResult<Box<[Arg]>> {
        args.iter().map(|arg| self.parse(&arg, 0)).collect()
    }

    pub(crate) fn kwargs(&mut self, kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Keywords> {
        let Some(kwargs) = kwargs else {
            return Ok(Box::default());
        };
        kwargs
            .iter()
            .map(|(name, value)| {
                Ok((
                    name.cast_into::<PyString>()?.unbind(),
                    self.parse(&value, 0)?,
                ))
            })
            .collect()
    }

    fn parse(&mut self, obj: &Bound<'_, PyAny>, depth: usize) -> PyResult<Arg> {
        if let Ok(delayed) = obj.cast::<Delayed>() {
            return Ok(self.dep(delayed.get().node().clone()));
        }
        if !self.traverse || is_scalar(obj) {
            return Ok(Arg::Value(obj.clone().unbind()));
        }
        if depth >= MAX_NESTING {
            return Err(PyRecursionError::new_err(format!(
                "arguments are nested more than {MAX_NESTING} levels deep; pass such data inside an opaque \
                 object, or call delayed with traverse=False"
            )));
        }
        let depth = depth + 1;
        let rebuilt = if let Ok(list) = obj.cast_exact::<PyList>() {
            self.items(list.iter(), depth)?.map(Arg::List)
        } else if let Ok(tuple) = obj.cast_exact::<PyTuple>() {
            self.items(tuple.iter(), depth)?.map(Arg::Tuple)
        } else if let Ok(set) = obj.cast_exact::<PySet>() {
            self.items(set.iter(), depth)?.map(Arg::Set)
        } else if let Ok(dict) = obj.cast_exact::<PyDict>() {
            let pairs = dict
                .iter()
                .map(|(k, v)| Ok((self.parse(&k, depth)?, self.parse(&v, depth)?)))
                .collect::<PyResult<Box<[_]>>>()?;
            let has_deps = pairs.iter().any(|(k, v)| !k.is_value() || !v.is_value());
            has_deps.then_some(Arg::Dict(pairs))
        } else {
            match kind_of(&obj.get_type())? {
                Kind::Opaque => None,
                Kind::NamedTuple => self
                    .items(
                        obj.try_iter()?.collect::<PyResult<Vec<_>>>()?.into_iter(),
                        depth,
                    )?
                    .map(|args| {
                        Arg::Construct(Box::new(Construct {
                            ty: obj.get_type().into_any().unbind(),
                            args,
                            keywords: Box::default(),
                        }))
                    }),
                Kind::Dataclass(fields) => {
                    let keywords = fields
                        .iter()
                        .map(|name| {
                            Ok((
                                name.clone_ref(obj.py()),
                                self.parse(&obj.getattr(name)?, depth)?,
                            ))
                        })
                        .collect::<PyResult<Keywords>>()?;
                    keywords.iter().any(|(_, v)| !v.is_value()).then(|| {
                        Arg::Construct(Box::new(Construct {
                            ty: obj.get_type().into_any().unbind(),
                            args: Box::default(),
                            keywords,
                        }))
                    })
                }
                Kind::DaskCollection => return Ok(self.dep(foreign_collection(obj)?)),
                // An iterator can be read only once, so it is always replaced by the list of its items.
                Kind::Iterator => {
                    let items = obj.try_iter()?.collect::<PyResult<Vec<_>>>()?;
                    let parsed = items
                        .iter()
                        .map(|item| self.parse(item, depth))
                        .collect::<PyResult<Box<[_]>>>()?;
                    return Ok(Arg::List(parsed));
                }
            }
        };
        Ok(rebuilt.unwrap_or_else(|| Arg::Value(obj.clone().unbind())))
    }

    /// The parsed items, or `None` when none of them holds a `Delayed` (the original is then kept).
    fn items<'py>(
        &mut self,
        items: impl Iterator<Item = Bound<'py, PyAny>>,
        depth: usize,
    ) -> PyResult<Option<Box<[Arg]>>> {
        let parsed = items
            .map(|item| self.parse(&item, depth))
            .collect::<PyResult<Box<[_]>>>()?;
        Ok(parsed.iter().any(|arg| !arg.is_value()).then_some(parsed))
    }
}

fn is_scalar(obj: &Bound<'_, PyAny>) -> bool {
    obj.is_none()
        || obj.is_exact_instance_of::<PyInt>()
        || obj.is_exact_instance_of::<PyFloat>()
        || obj.is_exact_instance_of::<PyString>()
        || obj.is_exact_instance_of::<PyBytes>()
        || obj.is_exact_instance_of::<PyBool>()
}

#[derive(Clone)]
enum Kind {
    Opaque,
    NamedTuple,
    /// The names of the fields its `__init__` takes.
    Dataclass(Arc<[Py<PyString>]>),
    Iterator,
    /// A dask collection (a dask.delayed, array, ...): computed by dask inside a task of ours.
    DaskCollection,
}

/// How arguments of a type are traversed, decided once per type: the checks cost attribute lookups that
/// would otherwise be paid for every argument.
fn kind_of(ty: &Bound<'_, PyType>) -> PyResult<Kind> {
    /// Keyed by the type's address; the type is kept alive beside its kind, so the address cannot be
    /// reused by another type. Emptied when it holds [`KINDS_KEPT`] types, so that types made on the fly
    /// (classes defined in a function) are not kept alive forever.
    type Kinds = Mutex<FxHashMap<usize, (Py<PyType>, Kind)>>;
    const KINDS_KEPT: usize = 512;
    static KINDS: OnceLock<Kinds> = OnceLock::new();
    let kinds = KINDS.get_or_init(Default::default);
    let address = ty.as_ptr() as usize;
    if let Some((_, kind)) = kinds.lock().get(&address) {
        return Ok(kind.clone());
    }
    let py = ty.py();
    let kind = if ty.is_subclass_of::<PyTuple>()? && ty.hasattr("_fields")? {
        Kind::NamedTuple
    } else if ty.hasattr("__dataclass_fields__")? {
        static FIELDS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let fields = FIELDS.import(py, "dataclasses", "fields")?.call1((ty,))?;
        let names = fields
            .try_iter()?
            .filter_map(|field| {
                let field = field.ok()?;
                field
                    .getattr("init")
                    .ok()?
                    .is_truthy()
                    .ok()?
                    .then_some(())?;
                field
                    .getattr("name")
                    .ok()?
                    .cast_into::<PyString>()
                    .ok()
                    .map(Bound::unbind)
            })
            .collect();
        Kind::Dataclass(names)
    } else if ty.hasattr("__dask_graph__")? {
        Kind::DaskCollection
    } else if ty.hasattr("__next__")? {
        Kind::Iterator
    } else {
        Kind::Opaque
    };
    let evicted = {
        let mut kinds = kinds.lock();
        let evicted = if kinds.len() >= KINDS_KEPT {
            std::mem::take(&mut *kinds)
        } else {
            FxHashMap::default()
        };
        kinds.insert(address, (ty.clone().unbind(), kind.clone()));
        evicted
    };
    // Dropped after the lock is released: freeing a type runs Python, which may call back in here.
    drop(evicted);
    Ok(kind)
}

/// A task computing a dask collection with dask, keyed like the collection when it has one key (a
/// dask.delayed), so that the same collection passed twice is computed once.
fn foreign_collection(obj: &Bound<'_, PyAny>) -> PyResult<Arc<TaskNode>> {
    static COMPUTE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let compute = COMPUTE.import(obj.py(), "belated._dask", "compute_collection")?;
    let key = match obj.getattr("key").and_then(|k| k.extract::<String>()) {
        Ok(key) => Key::Named(key.into()),
        Err(_) => Key::unique(),
    };
    let op = Op::Call {
        func: Arg::Value(compute.clone().unbind()),
        args: Box::new([Arg::Value(obj.clone().unbind())]),
        kwargs: Box::default(),
    };
    Ok(TaskNode::new(PyTask { key, op }, Vec::new()))
}

/// The name the key of a plain value starts with: its function name, or else its type's name.
pub(crate) fn value_prefix(value: &Bound<'_, PyAny>) -> String {
    if value.is_callable() {
        funcname(value)
    } else {
        type_name(&value.get_type())
    }
}

/// The name a call's key starts with, as dask's `funcname` makes it.
pub(crate) fn funcname(func: &Bound<'_, PyAny>) -> String {
    if let Ok(inner) = func.getattr("func") {
        if func.get_type().name().is_ok_and(|n| n == "partial") {
            return funcname(&inner);
        }
    }
    match func.getattr("__name__").and_then(|n| n.extract::<String>()) {
        Ok(name) if name == "<lambda>" => "lambda".into(),
        Ok(name) => name.chars().take(50).collect(),
        Err(_) => type_name(&func.get_type()),
    }
}

fn type_name(ty: &Bound<'_, PyType>) -> String {
    ty.name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "object".into())
}

/// `name` without a trailing `-<32 hex digits>` token, as pure keys end.
fn strip_token(name: &str) -> &str {
    match name.rsplit_once('-') {
        Some((head, token))
            if token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            head
        }
        _ => name,
    }
}

/// A uuid4-shaped text for a unique id: random per process, so keys of different processes differ.
fn uuid_text(id: u64) -> String {
    static SALT: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    let salt = SALT.get_or_init(Default::default);
    let word = |lane: u8| salt.hash_one((id, lane));
    let (a, b) = (word(0), word(1));
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | (b >> 48) & 0x3fff,
        b & 0xffff_ffff_ffff
    )
}
