//! Call arguments made into templates ([`Arg`]): every `Delayed` found inside them (also inside lists,
//! tuples, dicts, sets, slices, namedtuples, dataclasses and iterators, as dask does) becomes a
//! reference to one of the node's dependencies. A container with no `Delayed` inside is kept as the
//! original object. Above [`crate::task`] and [`crate::delayed`], which it reads; below everything
//! that builds tasks.

use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use pyo3::exceptions::{PyRecursionError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList, PySet, PySlice, PyString, PyTuple, PyType};
use rustc_hash::FxHashMap;

use crate::dask_graph::{collection_node, collections_together};
use crate::delayed::Delayed;
use crate::gil::pace;
use crate::task::{is_plain_scalar, Arg, Construct, Keywords, TaskNode};

/// Deeper argument nesting than this is refused with a RecursionError, as Python itself would, rather
/// than risking the native stack of a worker thread.
const MAX_NESTING: usize = 1000;

/// Turns call arguments into templates, collecting the `Delayed` objects they contain as dependencies.
pub(crate) struct Collector {
    pub(crate) deps: Vec<Arc<TaskNode>>,
    traverse: bool,
    /// The top-level argument being parsed (for keywords, all of them): as in dask, the dask
    /// collections found inside one argument are optimized together, so the tasks they share run once.
    argument: Option<Py<PyAny>>,
    /// The collections of [`Self::argument`] optimized together, by address (each kept alive beside
    /// its node, so the address cannot be reused); filled when the first one is met inside a container.
    optimized_together: FxHashMap<usize, (Py<PyAny>, Arc<TaskNode>)>,
}

impl Collector {
    pub(crate) fn new(traverse: bool) -> Self {
        Collector {
            deps: Vec::new(),
            traverse,
            argument: None,
            optimized_together: FxHashMap::default(),
        }
    }

    fn start_argument(&mut self, argument: &Bound<'_, PyAny>) {
        self.argument = Some(argument.clone().unbind());
        if !self.optimized_together.is_empty() {
            self.optimized_together.clear();
        }
    }

    pub(crate) fn dep(&mut self, node: Arc<TaskNode>) -> Arg {
        self.deps.push(node);
        Arg::Dep((self.deps.len() - 1) as u32)
    }

    pub(crate) fn arg(&mut self, obj: &Bound<'_, PyAny>) -> PyResult<Arg> {
        self.start_argument(obj);
        self.parse(obj, 0)
    }

    pub(crate) fn args(&mut self, args: &Bound<'_, PyTuple>) -> PyResult<Box<[Arg]>> {
        exact(args.iter().map(|arg| {
            self.start_argument(&arg);
            self.parse(&arg, 0)
        }))
    }

    pub(crate) fn kwargs(&mut self, kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Keywords> {
        let Some(kwargs) = kwargs else {
            return Ok(Box::default());
        };
        self.start_argument(kwargs.as_any());
        exact(kwargs.iter().map(|(name, value)| {
            Ok((
                name.cast_into::<PyString>()?.unbind(),
                // The keywords are one argument, as in dask: their values are inside it.
                self.parse(&value, 1)?,
            ))
        }))
    }

    fn parse(&mut self, obj: &Bound<'_, PyAny>, depth: usize) -> PyResult<Arg> {
        // Other threads may run here (a million arguments take a while): containers that forbid
        // changes while they are iterated (dicts, sets) are read into a list before their items are
        // parsed.
        pace(obj.py())?;
        if let Ok(delayed) = obj.cast::<Delayed>() {
            return Ok(self.dep(delayed.get().node().clone()));
        }
        if !self.traverse || is_plain_scalar(obj) {
            return Ok(Arg::Value(obj.clone().unbind()));
        }
        if depth >= MAX_NESTING {
            return Err(PyRecursionError::new_err(format!(
                "arguments are nested more than {MAX_NESTING} levels deep; pass such data inside an opaque \
                 object, or wrap it in delayed(data, traverse=False)"
            )));
        }
        let depth = depth + 1;
        let rebuilt = if let Ok(list) = obj.cast_exact::<PyList>() {
            self.items(list.iter(), depth)?.map(Arg::List)
        } else if let Ok(tuple) = obj.cast_exact::<PyTuple>() {
            self.items(tuple.iter(), depth)?.map(Arg::Tuple)
        } else if let Ok(set) = obj.cast_exact::<PySet>() {
            self.items(set.iter().collect::<Vec<_>>().into_iter(), depth)?
                .map(Arg::Set)
        } else if let Ok(slice) = obj.cast_exact::<PySlice>() {
            self.slice(slice, depth)?
        } else if let Ok(dict) = obj.cast_exact::<PyDict>() {
            let pairs = dict
                .iter()
                .collect::<Vec<_>>()
                .into_iter()
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
                Kind::Dataclass(fields) => self.dataclass(obj, &fields, depth)?,
                Kind::ClientFuture => {
                    // Its value, as distributed's Client gives a task a Future's result: the task
                    // would otherwise receive the Future object itself.
                    let held = obj.call_method0("_as_delayed")?;
                    return Ok(self.dep(held.cast::<Delayed>()?.get().node().clone()));
                }
                Kind::DaskCollection => {
                    // At depth 1 the collection is the whole argument, alone in it.
                    let node = if depth > 1 {
                        self.collection_in_argument(obj)?
                    } else {
                        collection_node(obj)?
                    };
                    return Ok(self.dep(node));
                }
                // An iterator can be read only once, so it is always replaced by its items: as dask
                // does, a tuple's or a set's iterator by a tuple or a set, any other by a list.
                Kind::Iterator(read_as) => {
                    let items = obj.try_iter()?.collect::<PyResult<Vec<_>>>()?;
                    let parsed = items
                        .iter()
                        .map(|item| self.parse(item, depth))
                        .collect::<PyResult<Box<[_]>>>()?;
                    return Ok(match read_as {
                        ReadAs::List => Arg::List(parsed),
                        ReadAs::Tuple => Arg::Tuple(parsed),
                        ReadAs::Set => Arg::Set(parsed),
                    });
                }
            }
        };
        Ok(rebuilt.unwrap_or_else(|| Arg::Value(obj.clone().unbind())))
    }

    // Rarer kinds are parsed apart, which keeps the frame of the recursive `parse` small.

    /// The node of a dask collection met inside the current argument: optimized together with the
    /// argument's other collections, as dask does, the first time one is met.
    fn collection_in_argument(&mut self, obj: &Bound<'_, PyAny>) -> PyResult<Arc<TaskNode>> {
        let address = obj.as_ptr() as usize;
        if self.optimized_together.is_empty() {
            if let Some(argument) = self.argument.take() {
                for (collection, node) in collections_together(argument.bind(obj.py()))? {
                    let address = collection.as_ptr() as usize;
                    self.optimized_together
                        .insert(address, (collection.unbind(), node));
                }
            }
        }
        match self.optimized_together.get(&address) {
            Some((_, node)) => Ok(Arc::clone(node)),
            // Not reached by the scan of the argument (inside an iterator, say): taken alone.
            None => collection_node(obj),
        }
    }

    /// `slice(start, stop, step)` rebuilt around results, as dask does.
    fn slice(&mut self, slice: &Bound<'_, PySlice>, depth: usize) -> PyResult<Option<Arg>> {
        let bounds = [
            slice.getattr("start")?,
            slice.getattr("stop")?,
            slice.getattr("step")?,
        ];
        Ok(self.items(bounds.into_iter(), depth)?.map(|args| {
            Arg::Construct(Box::new(Construct {
                ty: slice.get_type().into_any().unbind(),
                args,
                keywords: Box::default(),
            }))
        }))
    }

    /// A dataclass rebuilt from the fields that are set, after dask's check that this is possible.
    fn dataclass(
        &mut self,
        obj: &Bound<'_, PyAny>,
        fields: &[Py<PyString>],
        depth: usize,
    ) -> PyResult<Option<Arg>> {
        let present = fields
            .iter()
            .filter_map(|name| obj.getattr(name).ok().map(|value| (name, value)))
            .collect::<Vec<_>>();
        let keywords = present
            .iter()
            .map(|(name, value)| Ok(((*name).clone_ref(obj.py()), self.parse(value, depth)?)))
            .collect::<PyResult<Keywords>>()?;
        if keywords.iter().all(|(_, v)| v.is_value()) {
            return Ok(None);
        }
        check_rebuildable(obj, &present)?;
        Ok(Some(Arg::Construct(Box::new(Construct {
            ty: obj.get_type().into_any().unbind(),
            args: Box::default(),
            keywords,
        }))))
    }

    /// The parsed items, or `None` when none of them holds a `Delayed` (the original is then kept).
    fn items<'py>(
        &mut self,
        items: impl Iterator<Item = Bound<'py, PyAny>>,
        depth: usize,
    ) -> PyResult<Option<Box<[Arg]>>> {
        let parsed = exact(items.map(|item| self.parse(&item, depth)))?;
        Ok(parsed.iter().any(|arg| !arg.is_value()).then_some(parsed))
    }
}

/// The items, allocated at their exact number: collecting fallible items would allocate room for four
/// and shrink, which leaves a hole in the heap for every call built (80 bytes a call, measured).
fn exact<T>(items: impl Iterator<Item = PyResult<T>>) -> PyResult<Box<[T]>> {
    let mut collected = Vec::with_capacity(items.size_hint().0);
    for item in items {
        collected.push(item?);
    }
    Ok(collected.into_boxed_slice())
}

#[derive(Clone)]
enum Kind {
    Opaque,
    NamedTuple,
    /// The names of its fields.
    Dataclass(Arc<[Py<PyString>]>),
    Iterator(ReadAs),
    /// A dask collection (a dask.delayed, array, ...): its tasks become tasks of ours.
    DaskCollection,
    /// A future of a belated `Client` (in the caller, or in a task of a worker process): the result it
    /// will have.
    ClientFuture,
}

/// The container an iterator's items are passed in.
#[derive(Clone, Copy)]
enum ReadAs {
    List,
    Tuple,
    Set,
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
    static FUTURE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    let kind = if ty.is_subclass_of::<PyTuple>()? && ty.hasattr("_fields")? {
        Kind::NamedTuple
    } else if ty.hasattr("__dataclass_fields__")? {
        static FIELDS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let fields = FIELDS.import(py, "dataclasses", "fields")?.call1((ty,))?;
        let names = fields
            .try_iter()?
            .map(|field| Ok(field?.getattr("name")?.cast_into::<PyString>()?.unbind()))
            .collect::<PyResult<_>>()?;
        Kind::Dataclass(names)
    } else if ty.hasattr("__dask_graph__")? {
        Kind::DaskCollection
    } else if ty.is_subclass(FUTURE.import(py, "belated._futures", "AnyFuture")?)? {
        Kind::ClientFuture
    } else if ty.hasattr("__next__")? {
        let iterator_type = |container: &Bound<'_, PyAny>| -> PyResult<bool> {
            Ok(ty.is(container.try_iter()?.get_type()))
        };
        Kind::Iterator(if iterator_type(PyTuple::empty(py).as_any())? {
            ReadAs::Tuple
        } else if iterator_type(PySet::empty(py)?.as_any())? {
            ReadAs::Set
        } else {
            ReadAs::List
        })
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

/// dask's check that a dataclass holding `Delayed` objects can be rebuilt from its fields: its
/// `__init__` must take every field that is set.
fn check_rebuildable(
    obj: &Bound<'_, PyAny>,
    present: &[(&Py<PyString>, Bound<'_, PyAny>)],
) -> PyResult<()> {
    let py = obj.py();
    static REPLACE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let replace = REPLACE.import(py, "dataclasses", "replace")?;
    let fields = PyDict::new(py);
    for (name, value) in present {
        fields.set_item(name.bind(py), value)?;
    }
    let Err(error) = replace.call((obj,), Some(&fields)) else {
        return Ok(());
    };
    let type_name = obj.get_type().qualname()?;
    let init_false = error.is_instance_of::<PyValueError>(py)
        || error.to_string().contains("is declared with init=False");
    let rebuilt = if init_false {
        PyValueError::new_err(format!(
            "Failed to unpack {type_name} instance. Note that using fields with `init=False` are not \
             supported."
        ))
    } else if error.is_instance_of::<PyTypeError>(py) {
        PyTypeError::new_err(format!(
            "Failed to unpack {type_name} instance. Note that using a custom __init__ is not supported."
        ))
    } else {
        return Err(error);
    };
    rebuilt.set_cause(py, Some(error));
    Err(rebuilt)
}
