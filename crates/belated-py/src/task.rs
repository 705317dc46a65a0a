//! A task's payload: what to run, on which arguments, under which key. The lowest layer of the
//! bindings: it knows nothing of `Delayed` (arguments are made into templates by [`crate::collect`]).
//!
//! Arguments are kept as a template ([`Arg`]): plain Python objects are held as they are (never copied or
//! pickled), and the result of a dependency is [`Arg::Dep`], an index into the node's dependencies.
//!
//! Keys follow dask: `<function name>-<token>`. Impure tasks get a unique id whose text is only made
//! when somebody looks at the key, so building a call allocates no string. The id is salted per
//! process, and the salt is renewed in a forked child ([`reseed_keys_after_fork`]): two children of one
//! parent never make the same key.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use belated_core::{Node, Payload};
use pyo3::prelude::*;
use pyo3::pyclass::{PyTraverseError, PyVisit};
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyFloat, PyInt, PyList, PySet, PyString, PyTuple, PyType};

use crate::gil::pace;

pub(crate) type TaskNode = Node<PyTask>;

pub(crate) struct PyTask {
    pub(crate) key: Key,
    pub(crate) op: Op,
    /// Whether this task or one it depends on holds an object that may be part of a reference cycle
    /// ([`may_cycle`]): only then are its values shown to the cycle collector (`Delayed::into_python`).
    may_cycle: bool,
}

#[derive(Clone)]
pub(crate) enum Key {
    /// An impure task's id, with the salt of the process that made it.
    Unique {
        id: u64,
        salt: u64,
    },
    Named(Arc<str>),
    /// A key that is not a string (dask's `(name, index)` tuples): kept as given, merged with the
    /// other keys that are not strings and equal it (see [`merge_text`]).
    Object(Arc<ObjectKey>),
}

pub(crate) struct ObjectKey {
    /// A NUL, then the key's [`merge_text`]: the name it merges under, apart from a string key of the
    /// same text (the key `1` beside `"1"`, or `('x', 1)` beside `"('x', 1)"`, are two tasks, as in dask).
    merge: Box<str>,
    /// The key's repr, where it is not the merge name's text (`('x', 1.0)`, merged as `('x', 1)`).
    repr: Option<Box<str>>,
    key: Py<PyAny>,
}

impl ObjectKey {
    /// The key's repr, as it is shown.
    pub(crate) fn text(&self) -> &str {
        self.repr.as_deref().unwrap_or(&self.merge[1..])
    }
}

impl Key {
    pub(crate) fn unique() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Key::Unique {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            salt: salt(),
        }
    }

    /// A key given by the user (`dask_key_name`, `name=`): a string, or a hashable object such as a tuple.
    pub(crate) fn given(key: &Bound<'_, PyAny>) -> PyResult<Self> {
        if let Ok(text) = key.cast::<PyString>() {
            return Ok(Key::Named(text.to_str()?.into()));
        }
        key.hash()?;
        let mut merge = String::from("\0");
        merge_text(key, &mut merge)?;
        let repr = key.repr()?;
        let repr = repr.to_str()?;
        Ok(Key::Object(Arc::new(ObjectKey {
            repr: (repr != &merge[1..]).then(|| repr.into()),
            merge: merge.into(),
            key: key.clone().unbind(),
        })))
    }

    /// The name tasks of this key merge under (see [`Payload::merge_name`]); none for a unique key.
    pub(crate) fn merge_name(&self) -> Option<&str> {
        match self {
            Key::Named(name) => Some(name),
            Key::Object(object) => Some(&object.merge),
            Key::Unique { .. } => None,
        }
    }

    /// The bits of the uuid a unique key's text ends with, after its function's name and a dash.
    pub(crate) fn unique_uuid(&self) -> Option<u128> {
        match *self {
            Key::Unique { id, salt } => Some(uuid_bits(id, salt)),
            _ => None,
        }
    }

    /// The key as dask shows it: a string, or the object it was given as.
    pub(crate) fn to_object<'py>(&self, py: Python<'py>, task: &PyTask) -> Bound<'py, PyAny> {
        match self {
            Key::Object(object) => object.key.bind(py).clone(),
            _ => PyString::new(py, &task.key_string(py)).into_any(),
        }
    }
}

/// Appends the text a key that is not a string merges under: its repr, with each number in it written
/// as the simplest number equal to it (`belated._tokenize.key_number`), so that keys equal in Python
/// (`('x', 1)`, `('x', 1.0)`, `('x', np.int64(1))`, `('x', True)`) are one task, as they are one key
/// of a dask graph, a dict.
fn merge_text(key: &Bound<'_, PyAny>, out: &mut String) -> PyResult<()> {
    static KEY_NUMBER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    if let Ok(tuple) = key.cast::<PyTuple>() {
        out.push('(');
        for (index, part) in tuple.iter().enumerate() {
            if index > 0 {
                out.push_str(", ");
            }
            merge_text(&part, out)?;
        }
        if tuple.len() == 1 {
            out.push(',');
        }
        out.push(')');
        return Ok(());
    }
    // Strings, ints and fractional floats are their simplest form already: no call to Python.
    let simplest = key.is_exact_instance_of::<PyString>()
        || key.is_exact_instance_of::<PyBytes>()
        || key.is_exact_instance_of::<PyInt>()
        || key
            .cast_exact::<PyFloat>()
            .is_ok_and(|float| float.value().fract() != 0.0);
    let repr = match simplest {
        true => key.repr()?,
        false => {
            let py = key.py();
            let key_number = KEY_NUMBER.import(py, "belated._tokenize", "key_number")?;
            key_number.call1((key,))?.repr()?
        }
    };
    out.push_str(repr.to_str()?);
    Ok(())
}

static SALT: AtomicU64 = AtomicU64::new(0);

/// This process's salt for unique keys; never 0 once made.
fn salt() -> u64 {
    let current = SALT.load(Ordering::Relaxed);
    if current != 0 {
        return current;
    }
    let fresh = fresh_salt();
    match SALT.compare_exchange(0, fresh, Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => fresh,
        Err(existing) => existing,
    }
}

/// A salt no other process has: the hasher's per-process random keys are inherited through `fork`, so
/// the pid and the time are mixed in.
fn fresh_salt() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    std::collections::hash_map::RandomState::new().hash_one((std::process::id(), nanos)) | 1
}

/// Called in a forked child: keys made from now on differ from those of the parent and its other children.
#[pyfunction]
pub(crate) fn reseed_keys_after_fork() {
    SALT.store(fresh_salt(), Ordering::Relaxed);
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
    /// `obj.<name>(*args, **kwargs)`.
    Method {
        obj: Arg,
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
        self.key.merge_name()
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
    /// A task running `op` under `key` on the results of `deps`.
    #[inline]
    pub(crate) fn new(py: Python<'_>, key: Key, op: Op, deps: &[Arc<TaskNode>]) -> Self {
        let func = match &op {
            Op::Call {
                func: Arg::Value(func),
                ..
            } => may_cycle(func.bind(py)),
            _ => false,
        };
        PyTask::calling(py, key, op, deps, func)
    }

    /// [`PyTask::new`] for a call whose function's [`may_cycle`] the caller knows (`func_may_cycle`;
    /// a function that is a dependency's result is one of `deps`).
    #[inline]
    pub(crate) fn calling(
        py: Python<'_>,
        key: Key,
        op: Op,
        deps: &[Arc<TaskNode>],
        func_may_cycle: bool,
    ) -> Self {
        let holds = |args: &[Arg]| args.iter().any(|arg| arg.may_cycle(py));
        let holds_keywords = |kwargs: &Keywords| kwargs.iter().any(|(_, arg)| arg.may_cycle(py));
        let own = match &op {
            Op::Value(arg) => arg.may_cycle(py),
            Op::Call { args, kwargs, .. } => {
                func_may_cycle || holds(args) || holds_keywords(kwargs)
            }
            Op::Method {
                obj, args, kwargs, ..
            } => obj.may_cycle(py) || holds(args) || holds_keywords(kwargs),
        };
        let key_may_cycle = matches!(&key, Key::Object(object) if may_cycle(object.key.bind(py)));
        let may_cycle = own || key_may_cycle || deps.iter().any(|dep| dep.payload().may_cycle);
        PyTask { key, op, may_cycle }
    }

    pub(crate) fn may_cycle(&self) -> bool {
        self.may_cycle
    }

    /// The key as dask hands it to callbacks: a string, or the object (a tuple) it was named with.
    pub(crate) fn key_object<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        self.key.to_object(py, self)
    }

    pub(crate) fn key_string(&self, py: Python<'_>) -> String {
        match &self.key {
            Key::Named(name) => name.to_string(),
            Key::Object(object) => object.text().to_string(),
            Key::Unique { id, salt } => format!("{}-{}", self.prefix(py), uuid_text(*id, *salt)),
        }
    }

    /// This task's key, for another task that stands for it (a persisted result): the text of a unique
    /// key depends on its task, so it is written out.
    pub(crate) fn key_for_copy(&self, py: Python<'_>) -> Key {
        match &self.key {
            Key::Unique { .. } => Key::Named(self.key_string(py).into()),
            key => key.clone(),
        }
    }

    /// What pictures call the task: its function name, or a name given without its token.
    pub(crate) fn label(&self, py: Python<'_>) -> String {
        match &self.key {
            Key::Unique { .. } => self.prefix(py),
            Key::Named(name) => strip_token(name).to_string(),
            Key::Object(object) => object.text().to_string(),
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
            Op::Call { .. } => "apply".into(),
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
            Work::Call(call) => call.run(),
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
            Op::Method {
                obj,
                name,
                args,
                kwargs,
            } => Work::Call(Call {
                func: obj.build(py, inputs)?.getattr(name.bind(py))?,
                args: build_tuple(py, args, inputs)?,
                kwargs: build_kwargs(py, kwargs, inputs)?,
            }),
        })
    }

    /// [`prepare_remote`](Self::prepare_remote) on the inputs that `input` makes, of which those
    /// `stored` gives an id of are kept in the call's worker: an argument of a call that is a list or
    /// tuple of two or more of those is made by `packed` from their ids (and whether it is a tuple),
    /// and `input` is asked only for the inputs used otherwise. A reduction over ten thousand results
    /// made a `Stored` stand-in for each, only for `dumps_call` to pack their ids: a third of the
    /// parent's CPU in a sum of trivial tasks.
    pub(crate) fn prepare_in_worker<'py>(
        &self,
        py: Python<'py>,
        stored: &[Option<u64>],
        input: impl Fn(usize) -> PyResult<PyValue>,
        packed: impl Fn(&[u64], bool) -> PyResult<Bound<'py, PyAny>>,
    ) -> PyResult<Call<'py>> {
        let Op::Call { func, args, kwargs } = &self.op else {
            let inputs = (0..stored.len()).map(input).collect::<PyResult<Vec<_>>>()?;
            return self.prepare_remote(py, &inputs);
        };
        let packs: Vec<Option<(Vec<u64>, bool)>> =
            args.iter().map(|arg| packable(arg, stored)).collect();
        let mut used = vec![false; stored.len()];
        let mut mark = |dep: u32| used[dep as usize] = true;
        func.visit_deps(&mut mark);
        for (arg, pack) in args.iter().zip(&packs) {
            if pack.is_none() {
                arg.visit_deps(&mut mark);
            }
        }
        for (_, arg) in kwargs.iter() {
            arg.visit_deps(&mut mark);
        }
        // An input only packed is never read: `None` stands in for it.
        let inputs = (0..stored.len())
            .map(|at| match used[at] {
                true => input(at),
                false => Ok(PyValue(py.None())),
            })
            .collect::<PyResult<Vec<_>>>()?;
        let built = args
            .iter()
            .zip(packs)
            .map(|(arg, pack)| match pack {
                Some((ids, as_tuple)) => packed(&ids, as_tuple),
                None => arg.build(py, &inputs),
            })
            .collect::<PyResult<Vec<_>>>()?;
        Ok(Call {
            func: func.build(py, &inputs)?,
            args: PyTuple::new(py, built)?,
            kwargs: build_kwargs(py, kwargs, &inputs)?,
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
            Op::Method {
                obj,
                name,
                args,
                kwargs,
            } => {
                let call_args = (
                    obj.build(py, inputs)?,
                    name.bind(py),
                    build_tuple(py, args, inputs)?,
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

    /// Shows the cycle collector the Python objects this task holds, for an owner that holds the task
    /// alone (see `Delayed`'s traversal).
    pub(crate) fn traverse(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        // A key object is shared by the copies of a task (`key_for_copy`): it is this task's alone
        // only while its one handle is here.
        if let Key::Object(object) = &self.key {
            if Arc::strong_count(object) == 1 && Arc::weak_count(object) == 0 {
                visit.call(&object.key)?;
            }
        }
        match &self.op {
            Op::Value(arg) => arg.traverse(visit),
            Op::Call { func, args, kwargs } => {
                func.traverse(visit)?;
                traverse_call(visit, args, kwargs)
            }
            Op::Method {
                obj,
                name,
                args,
                kwargs,
            } => {
                obj.traverse(visit)?;
                visit.call(name)?;
                traverse_call(visit, args, kwargs)
            }
        }
    }
}

fn traverse_call(
    visit: PyVisit<'_>,
    args: &[Arg],
    kwargs: &Keywords,
) -> Result<(), PyTraverseError> {
    args.iter().try_for_each(|arg| arg.traverse(visit))?;
    kwargs.iter().try_for_each(|(name, arg)| {
        visit.call(name)?;
        arg.traverse(visit)
    })
}

impl Op {
    /// The indices of the node's dependencies that no argument reads: edges that only order tasks
    /// (`graph_manipulation.bind`), carrying no data.
    pub(crate) fn unread_deps(&self, dep_count: usize) -> Vec<usize> {
        let mut read = vec![false; dep_count];
        let mut mark = |arg: &Arg| arg.visit_deps(&mut |i| read[i as usize] = true);
        match self {
            Op::Value(arg) => mark(arg),
            Op::Call { func, args, kwargs } => {
                mark(func);
                args.iter().for_each(&mut mark);
                kwargs.iter().for_each(|(_, arg)| mark(arg));
            }
            Op::Method {
                obj, args, kwargs, ..
            } => {
                mark(obj);
                args.iter().for_each(&mut mark);
                kwargs.iter().for_each(|(_, arg)| mark(arg));
            }
        }
        (0..dep_count).filter(|&i| !read[i]).collect()
    }

    pub(crate) fn clone_ref(&self, py: Python<'_>) -> Op {
        let all = |args: &[Arg]| args.iter().map(|a| a.clone_ref(py)).collect();
        let keywords = |kwargs: &Keywords| {
            kwargs
                .iter()
                .map(|(name, arg)| (name.clone_ref(py), arg.clone_ref(py)))
                .collect()
        };
        match self {
            Op::Value(arg) => Op::Value(arg.clone_ref(py)),
            Op::Call { func, args, kwargs } => Op::Call {
                func: func.clone_ref(py),
                args: all(args),
                kwargs: keywords(kwargs),
            },
            Op::Method {
                obj,
                name,
                args,
                kwargs,
            } => Op::Method {
                obj: obj.clone_ref(py),
                name: name.clone_ref(py),
                args: all(args),
                kwargs: keywords(kwargs),
            },
        }
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

    /// Makes the call, on a thread that Python may end inside it.
    ///
    /// A task cancelled or timed out on a pool thread keeps running there, and may take the
    /// interpreter back while it finalizes (a loop of short sleeps, any I/O). Python before 3.14 then
    /// ends the thread by `pthread_exit`, a forced unwind, which aborts the whole process when it
    /// reaches a Rust frame that called Python through a function declared not to unwind, as pyo3
    /// declares `PyObject_Call`. Called as a function that may unwind, it reaches the guard instead,
    /// which parks the thread until the process exits, as pyo3 does around its own waits for the
    /// interpreter.
    pub(crate) fn run(self) -> PyResult<Bound<'py, PyAny>> {
        use pyo3::ffi::PyObject;
        type Declared =
            unsafe extern "C" fn(*mut PyObject, *mut PyObject, *mut PyObject) -> *mut PyObject;
        type Unwinding = unsafe extern "C-unwind" fn(
            *mut PyObject,
            *mut PyObject,
            *mut PyObject,
        ) -> *mut PyObject;
        // SAFETY: the same function and arguments; only whether it may unwind differs. The pointer is
        // opaque to the optimizer, which would otherwise call the symbol as pyo3 declared it.
        let call = std::hint::black_box(unsafe {
            std::mem::transmute::<Declared, Unwinding>(pyo3::ffi::PyObject_Call)
        });
        let kwargs = self
            .kwargs
            .as_ref()
            .map_or(std::ptr::null_mut(), |kwargs| kwargs.as_ptr());
        let guard = ParkOnForcedUnwind;
        // SAFETY: the pointers are live objects held by `self`, attached to the interpreter by 'py.
        let result = unsafe { call(self.func.as_ptr(), self.args.as_ptr(), kwargs) };
        std::mem::forget(guard);
        // SAFETY: PyObject_Call returns a new reference, or null with an exception set.
        unsafe { Bound::from_owned_ptr_or_err(self.func.py(), result) }
    }
}

/// Dropped only by an unwind out of a call into Python, which nothing but `pthread_exit` makes.
struct ParkOnForcedUnwind;

impl Drop for ParkOnForcedUnwind {
    fn drop(&mut self) {
        loop {
            std::thread::park();
        }
    }
}

/// The ids of `arg`'s items if it is a list or tuple of two or more inputs all kept in the call's
/// worker (`stored`), and whether it is a tuple.
fn packable(arg: &Arg, stored: &[Option<u64>]) -> Option<(Vec<u64>, bool)> {
    let (items, as_tuple) = match arg {
        Arg::List(items) => (items, false),
        Arg::Tuple(items) => (items, true),
        _ => return None,
    };
    if items.len() < 2 {
        return None;
    }
    let ids = items.iter().map(|item| match item {
        Arg::Dep(at) => stored[*at as usize],
        _ => None,
    });
    Some((ids.collect::<Option<Vec<u64>>>()?, as_tuple))
}

fn build_tuple<'py>(
    py: Python<'py>,
    args: &[Arg],
    inputs: &[PyValue],
) -> PyResult<Bound<'py, PyTuple>> {
    PyTuple::new(py, build_all(py, args, inputs)?)
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
            Arg::List(items) => build_list(py, items, inputs)?.into_any(),
            Arg::Tuple(items) => build_tuple(py, items, inputs)?.into_any(),
            Arg::Set(items) => PySet::new(py, build_all(py, items, inputs)?)?.into_any(),
            Arg::Dict(pairs) => {
                let dict = PyDict::new(py);
                for (key, value) in pairs.iter() {
                    dict.set_item(key.build(py, inputs)?, value.build(py, inputs)?)?;
                    pace(py)?;
                }
                dict.into_any()
            }
            Arg::Construct(c) => c.ty.bind(py).call(
                build_tuple(py, &c.args, inputs)?,
                build_kwargs(py, &c.keywords, inputs)?.as_ref(),
            )?,
        })
    }

    pub(crate) fn visit_deps(&self, visit: &mut impl FnMut(u32)) {
        match self {
            Arg::Value(_) => {}
            Arg::Dep(i) => visit(*i),
            Arg::List(items) | Arg::Tuple(items) | Arg::Set(items) => {
                items.iter().for_each(|item| item.visit_deps(visit))
            }
            Arg::Dict(pairs) => pairs.iter().for_each(|(k, v)| {
                k.visit_deps(visit);
                v.visit_deps(visit);
            }),
            Arg::Construct(c) => {
                c.args.iter().for_each(|a| a.visit_deps(visit));
                c.keywords.iter().for_each(|(_, a)| a.visit_deps(visit));
            }
        }
    }

    fn may_cycle(&self, py: Python<'_>) -> bool {
        match self {
            Arg::Value(value) => may_cycle(value.bind(py)),
            Arg::Dep(_) => false,
            Arg::List(items) | Arg::Tuple(items) | Arg::Set(items) => {
                items.iter().any(|item| item.may_cycle(py))
            }
            Arg::Dict(pairs) => pairs
                .iter()
                .any(|(key, value)| key.may_cycle(py) || value.may_cycle(py)),
            Arg::Construct(c) => {
                may_cycle(c.ty.bind(py))
                    || c.args.iter().any(|arg| arg.may_cycle(py))
                    || c.keywords.iter().any(|(_, arg)| arg.may_cycle(py))
            }
        }
    }

    fn traverse(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self {
            Arg::Value(value) => visit.call(value),
            Arg::Dep(_) => Ok(()),
            Arg::List(items) | Arg::Tuple(items) | Arg::Set(items) => {
                items.iter().try_for_each(|item| item.traverse(visit))
            }
            Arg::Dict(pairs) => pairs.iter().try_for_each(|(key, value)| {
                key.traverse(visit)?;
                value.traverse(visit)
            }),
            Arg::Construct(c) => {
                visit.call(&c.ty)?;
                traverse_call(visit, &c.args, &c.keywords)
            }
        }
    }

    pub(crate) fn clone_ref(&self, py: Python<'_>) -> Arg {
        let all = |items: &[Arg]| items.iter().map(|a| a.clone_ref(py)).collect();
        match self {
            Arg::Value(value) => Arg::Value(value.clone_ref(py)),
            Arg::Dep(i) => Arg::Dep(*i),
            Arg::List(items) => Arg::List(all(items)),
            Arg::Tuple(items) => Arg::Tuple(all(items)),
            Arg::Set(items) => Arg::Set(all(items)),
            Arg::Dict(pairs) => Arg::Dict(
                pairs
                    .iter()
                    .map(|(k, v)| (k.clone_ref(py), v.clone_ref(py)))
                    .collect(),
            ),
            Arg::Construct(c) => Arg::Construct(Box::new(Construct {
                ty: c.ty.clone_ref(py),
                args: all(&c.args),
                keywords: c
                    .keywords
                    .iter()
                    .map(|(name, arg)| (name.clone_ref(py), arg.clone_ref(py)))
                    .collect(),
            })),
        }
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
    // A task whose argument is a million results builds it while other threads wait: they get
    // the interpreter as they would from Python code that built it.
    items
        .iter()
        .map(|item| {
            pace(py)?;
            item.build(py, inputs)
        })
        .collect()
}

/// A list of `items`, each appended as it is built ([`build_all`] for why it paces): a fan-in task's
/// argument is a list of a million results, which collected first and then copied into a new list
/// held the interpreter 5 to 15 ms longer, unoffered. Appending never shows another thread (through
/// `gc.get_objects`) a list with empty slots, as a list made at its full length and then filled would.
fn build_list<'py>(
    py: Python<'py>,
    items: &[Arg],
    inputs: &[PyValue],
) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for item in items {
        pace(py)?;
        list.append(item.build(py, inputs)?)?;
    }
    Ok(list)
}

/// The name the key of a plain value starts with: its function name, or else its type's name.
pub(crate) fn value_prefix(value: &Bound<'_, PyAny>) -> String {
    if value.is_callable() {
        funcname(value)
    } else {
        type_name(&value.get_type())
    }
}

/// Whether `object` may be part of a reference cycle that only the cycle collector can free. As
/// CPython's own test for what a tuple holds: an object the collector tracks, or a dict (which it
/// tracks once something that may be tracked is put in). Two kinds of tracked objects are left out,
/// because a cycle through them is not garbage in practice: a function with no closure (what it
/// holds is its module's globals, alive with the module, and its defaults and attributes, where
/// nobody puts a lazy value) and a builtin function of a module (`abs`, `operator.add`). Methods,
/// closures, partials and instances are in.
///
/// Leaving out an object that is part of a cycle only leaks it (the collector then sees a value
/// holding it as an outside reference); it never frees what is in use.
pub(crate) fn may_cycle(object: &Bound<'_, PyAny>) -> bool {
    // SAFETY: `object` is a live object.
    if unsafe { pyo3::ffi::PyObject_GC_IsTracked(object.as_ptr()) } == 0 {
        return object.is_instance_of::<PyDict>();
    }
    let py = object.py();
    // Builtin type objects live as long as the interpreter, so their addresses identify them.
    static FUNCTION: PyOnceLock<usize> = PyOnceLock::new();
    static BUILTIN: PyOnceLock<usize> = PyOnceLock::new();
    let kind = object.get_type_ptr() as usize;
    let address = |name: &str| -> PyResult<usize> {
        Ok(py
            .import("types")?
            .getattr(name)?
            .cast_into::<PyType>()?
            .as_type_ptr() as usize)
    };
    let is = |cell: &PyOnceLock<usize>, name: &str| {
        cell.get_or_try_init(py, || address(name))
            .is_ok_and(|&ty| ty == kind)
    };
    if is(&FUNCTION, "FunctionType") {
        return !object
            .getattr(pyo3::intern!(py, "__closure__"))
            .is_ok_and(|closure| closure.is_none());
    }
    if is(&BUILTIN, "BuiltinFunctionType") {
        // SAFETY: `object` is a builtin function; its `self` is borrowed, and may be null.
        let owner = unsafe { pyo3::ffi::PyCFunction_GetSelf(object.as_ptr()) };
        // SAFETY: a non-null `owner` is a live object, borrowed from the function.
        return !owner.is_null() && unsafe { pyo3::ffi::PyModule_Check(owner) } == 0;
    }
    true
}

/// The name a call's key starts with, as dask's `funcname` makes it.
pub(crate) fn funcname(func: &Bound<'_, PyAny>) -> String {
    let py = func.py();
    // The type is checked before the attribute: a failed lookup costs an exception, on every call.
    if func.get_type().name().is_ok_and(|n| n == "partial") {
        if let Ok(inner) = func.getattr(pyo3::intern!(py, "func")) {
            return funcname(&inner);
        }
    }
    match func
        .getattr(pyo3::intern!(py, "__name__"))
        .and_then(|n| n.extract::<String>())
    {
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

/// The 128 bits of a unique id's uuid4-shaped text (see [`uuid_text`]).
pub(crate) fn uuid_bits(id: u64, salt: u64) -> u128 {
    let a = splitmix64(salt ^ splitmix64(id));
    let b = splitmix64(a ^ salt.rotate_left(29));
    u128::from(a >> 32) << 96
        | u128::from((a >> 16) & 0xffff) << 80
        | u128::from(0x4000 | a & 0xfff) << 64
        | u128::from(0x8000 | (b >> 48) & 0x3fff) << 48
        | u128::from(b & 0xffff_ffff_ffff)
}

/// A uuid4-shaped text for a unique id, different for every (id, salt) pair in practice.
fn uuid_text(id: u64, salt: u64) -> String {
    let bits = uuid_bits(id, salt);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        bits >> 96,
        (bits >> 80) & 0xffff,
        (bits >> 64) & 0xffff,
        (bits >> 48) & 0xffff,
        bits & 0xffff_ffff_ffff
    )
}

/// A bijective 64-bit mix (splitmix64's finaliser).
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Whether `object`'s type is exactly one of `belated._worker._PLAIN` (`None`, `int`, `float`,
/// `complex`, `str`, `bytes`, `bool`): a value with nothing inside to collect and that every pickler
/// takes, so that neither needs to look at it per task. The worker's set is the one list, so the two
/// sides of the wire cannot disagree on it.
pub(crate) fn is_plain_scalar(object: &Bound<'_, PyAny>) -> bool {
    static PLAIN: PyOnceLock<Vec<usize>> = PyOnceLock::new();
    let py = object.py();
    // Builtin type objects live as long as the interpreter, so their addresses identify them. Should
    // the set not be read, no value is plain: every one is then looked at, which is slower but right.
    let plain = PLAIN.get_or_init(py, || plain_types(py).unwrap_or_default());
    plain.contains(&(object.get_type_ptr() as usize))
}

fn plain_types(py: Python<'_>) -> PyResult<Vec<usize>> {
    let set = py.import("belated._worker")?.getattr("_PLAIN")?;
    set.try_iter()?
        .map(|kind| Ok(kind?.cast_into::<PyType>()?.as_type_ptr() as usize))
        .collect()
}
