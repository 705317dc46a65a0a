//! The Python face of `Delayed` and the `delayed` function: calls, operators, `[]` and attribute access
//! build new tasks; the dask collection protocol and pickling hooks. The top of the bindings' build side:
//! it uses the type ([`crate::delayed`]), the argument collector, tokens and the graph's exports.
//!
//! Semantics follow dask.delayed: every Python operator, `[]`, attribute access and calls build new
//! tasks; truth testing, `len()` and iteration of a value of unknown length, and setting attributes raise
//! TypeError. `delayed(func)` gives a callable `Delayed` whose calls become tasks; `obj.attr` gives one
//! whose call becomes a method call on the computed object.
//!
//! Keys follow dask's rules, so that the same program merges the same tasks: operators, `[]` and
//! attribute reads are pure (tokenized); calls and method calls are impure unless `pure=True` or the
//! `delayed_pure` configuration says otherwise, and a call's token covers the key of the `delayed(func)`
//! it is made on.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use pyo3::exceptions::{PyAttributeError, PyTypeError, PyUserWarning, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::pyclass::{CompareOp, PyTraverseError, PyVisit};
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyInt, PyList, PyString, PyTuple, PyType};

use crate::collect::Collector;
use crate::dask_graph::graph_node;
use crate::delayed::{CallOptions, Delayed, Role};
use crate::errors::catch_panics;
use crate::export::LegacyGraph;
use crate::pickle;
use crate::task::{funcname, value_prefix, Arg, Key, Op, PyTask, TaskNode};
use crate::token::{self, Part};

/// belated's `delayed_pure` setting: [`UNSET`], or 1 + the boolean.
static DEFAULT_PURE: AtomicU8 = AtomicU8::new(UNSET);
const UNSET: u8 = 0;

/// Mirrors the `delayed_pure` key of `belated.config`, or `None` when it does not set it.
#[pyfunction]
#[pyo3(signature = (pure))]
pub(crate) fn set_default_pure(pure: Option<bool>) {
    DEFAULT_PURE.store(pure.map_or(UNSET, |p| 1 + p as u8), Ordering::Relaxed);
}

/// Whether a call that does not say `pure=` is pure: as `belated.config` says, else as dask's own
/// configuration says when the program imported dask and set `delayed_pure` there (dask code keeps
/// working beside belated), else not.
fn resolve_pure(py: Python<'_>, pure: Option<bool>) -> PyResult<bool> {
    if let Some(pure) = pure {
        return Ok(pure);
    }
    match DEFAULT_PURE.load(Ordering::Relaxed) {
        UNSET => dask_default_pure(py),
        set => Ok(set == 2),
    }
}

/// `dask.config.get("delayed_pure", False)`, read without importing dask: its settings live in one
/// dict that `dask.config.set` and `refresh` change in place, so it is looked up once dask is loaded.
fn dask_default_pure(py: Python<'_>) -> PyResult<bool> {
    static MODULES: PyOnceLock<Py<PyDict>> = PyOnceLock::new();
    static DASK_CONFIG: PyOnceLock<Py<PyDict>> = PyOnceLock::new();
    let config = match DASK_CONFIG.get(py) {
        Some(config) => config.bind(py),
        None => {
            let modules = MODULES.get_or_try_init(py, || {
                PyResult::Ok(
                    py.import("sys")?
                        .getattr("modules")?
                        .cast_into::<PyDict>()?
                        .unbind(),
                )
            })?;
            let Some(module) = modules
                .bind(py)
                .get_item(pyo3::intern!(py, "dask.config"))?
            else {
                return Ok(false);
            };
            let config = module.getattr("config")?.cast_into::<PyDict>()?.unbind();
            DASK_CONFIG.get_or_init(py, || config).bind(py)
        }
    };
    // dask keeps a key as first written, with hyphens or underscores.
    for name in [
        pyo3::intern!(py, "delayed_pure"),
        pyo3::intern!(py, "delayed-pure"),
    ] {
        if let Some(value) = config.get_item(name)? {
            return value.is_truthy();
        }
    }
    Ok(false)
}

/// What a call was asked to be, besides its arguments.
struct CallSpec<'a, 'py> {
    pure: Option<bool>,
    key_name: Option<Bound<'py, PyAny>>,
    nout: Option<usize>,
    traverse: bool,
    args: &'a Bound<'py, PyTuple>,
    kwargs: Option<Bound<'py, PyDict>>,
}

impl Delayed {
    /// `operator.<name>(*operands)`: always pure, as in dask, so equal expressions get equal keys.
    fn operator(
        &self,
        py: Python<'_>,
        name: &'static str,
        operands: &[&Bound<'_, PyAny>],
    ) -> PyResult<Py<Delayed>> {
        static OPERATOR: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
        let module = OPERATOR.get_or_try_init(py, || py.import("operator").map(Bound::unbind))?;
        let func = module.bind(py).getattr(name)?;
        let args = PyTuple::new(py, operands)?;
        let call = build_call(
            py,
            CallTarget::Operator { func: &func, name },
            CallSpec {
                pure: Some(true),
                key_name: None,
                nout: None,
                traverse: true,
                args: &args,
                kwargs: None,
            },
        )?;
        Ok(call.into_python(py)?.unbind())
    }

    fn binary(
        slf: &Bound<'_, Self>,
        name: &'static str,
        other: &Bound<'_, PyAny>,
        reflected: bool,
    ) -> PyResult<Py<Delayed>> {
        let me = slf.as_any();
        let operands = if reflected { [other, me] } else { [me, other] };
        slf.get().operator(slf.py(), name, &operands)
    }
}

/// What is called. Each kind says how a pure call's key is made: `<prefix>-<token>`, the token hashing
/// what identifies the callable and the arguments, as dask's `call_function` does.
enum CallTarget<'a, 'py> {
    /// A call of `delayed(func)`, identified by that `Delayed`'s key.
    Function {
        func: &'a Bound<'py, PyAny>,
        leaf: &'a TaskNode,
    },
    /// A call of a computed value (dask's `apply`).
    Value(&'a Bound<'py, PyAny>),
    /// `obj.name(...)`.
    Method {
        obj: &'a Arc<TaskNode>,
        name: &'a Py<PyString>,
    },
    /// `operator.<name>` or `getattr`: pure whatever the configuration says.
    Operator {
        func: &'a Bound<'py, PyAny>,
        name: &'static str,
    },
}

impl<'py> CallTarget<'_, 'py> {
    fn prefix(&self) -> Cow<'static, str> {
        match self {
            CallTarget::Function { func, .. } => funcname(func).into(),
            CallTarget::Value(_) => "apply".into(),
            CallTarget::Method { name, .. } => name.to_string().into(),
            CallTarget::Operator { name, .. } => (*name).into(),
        }
    }

    /// What the token starts with: the callable's identity, and for a method call its object.
    fn token_head(&self, py: Python<'py>) -> Vec<Part<'_, 'py>> {
        match self {
            CallTarget::Function { leaf, .. } => vec![Part::Node(leaf)],
            CallTarget::Value(callee) => {
                vec![Part::Text("apply"), Part::Object((*callee).clone())]
            }
            CallTarget::Method { obj, name } => vec![Part::Method(name.bind(py)), Part::Node(obj)],
            CallTarget::Operator { name, .. } => vec![Part::Operator(name)],
        }
    }
}

fn build_call(
    py: Python<'_>,
    target: CallTarget<'_, '_>,
    spec: CallSpec<'_, '_>,
) -> PyResult<Delayed> {
    let mut collector = Collector::new(spec.traverse);
    let key = match &spec.key_name {
        Some(name) => Key::given(name)?,
        None if resolve_pure(py, spec.pure)? => {
            let token =
                token::call_token(py, &target.token_head(py), spec.args, spec.kwargs.as_ref())?;
            Key::Named(token::key_text(&target.prefix(), &token))
        }
        None => Key::unique(),
    };
    let args = collector.args(spec.args)?;
    let kwargs = collector.kwargs(spec.kwargs.as_ref())?;
    let func_may_cycle = match &target {
        // Known once for the function, by the `delayed(func)` it is called on.
        CallTarget::Function { leaf, .. } => Some(leaf.payload().may_cycle()),
        // `operator`'s functions and `getattr`, builtins of their modules.
        CallTarget::Operator { .. } => Some(false),
        CallTarget::Value(_) | CallTarget::Method { .. } => None,
    };
    let op = match target {
        CallTarget::Function { func, .. } | CallTarget::Operator { func, .. } => Op::Call {
            func: Arg::Value(func.clone().unbind()),
            args,
            kwargs,
        },
        CallTarget::Value(callee) => Op::Call {
            func: collector.arg(callee)?,
            args,
            kwargs,
        },
        CallTarget::Method { obj, name } => Op::Method {
            obj: collector.dep(Arc::clone(obj)),
            name: name.clone_ref(py),
            args,
            kwargs,
        },
    };
    let task = match func_may_cycle {
        Some(func) => PyTask::calling(py, key, op, &collector.deps, func),
        None => PyTask::new(py, key, op, &collector.deps),
    };
    let node = TaskNode::new(task, collector.deps);
    Ok(Delayed::new(node, spec.nout, Role::Value))
}

/// dask's call-time options, taken out of a call's keyword arguments, and the arguments left.
type CallTimeOptions<'py> = (
    Option<bool>,
    Option<Bound<'py, PyAny>>,
    Option<Bound<'py, PyDict>>,
);

/// Takes dask's call-time options out of a call's keyword arguments.
fn split_options<'py>(kwargs: Option<&Bound<'py, PyDict>>) -> PyResult<CallTimeOptions<'py>> {
    let Some(kwargs) = kwargs else {
        return Ok((None, None, None));
    };
    let pop = |name: &str| -> PyResult<Option<Bound<'py, PyAny>>> {
        let value = kwargs.get_item(name)?;
        if value.is_some() {
            kwargs.del_item(name)?;
        }
        Ok(value)
    };
    let pure = pop("pure")?
        .filter(|v| !v.is_none())
        .map(|v| v.is_truthy())
        .transpose()?;
    let key_name = pop("dask_key_name")?.filter(|v| !v.is_none());
    Ok((pure, key_name, (!kwargs.is_empty()).then(|| kwargs.clone())))
}

/// A `pure=` or `traverse=` option of `delayed`, read by its truth as dask reads it (`pure=1`,
/// `traverse=0`); `pure=None` stays unset.
pub(crate) struct Truthy(bool);

impl<'a, 'py> FromPyObject<'a, 'py> for Truthy {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        Ok(Truthy(obj.is_truthy()?))
    }
}

#[pymethods]
impl Delayed {
    /// dask's constructor, `Delayed(key, dsk)`: the value of `key` in the dask graph `dsk` (a dict or a
    /// `HighLevelGraph`), which libraries use to wrap a graph they built. `layer` names a
    /// `HighLevelGraph` layer in dask; the engine reads the graph task by task, so it is accepted and
    /// not needed.
    #[new]
    #[pyo3(signature = (key, dsk, length=None, layer=None))]
    fn py_new(
        key: &Bound<'_, PyAny>,
        dsk: &Bound<'_, PyAny>,
        length: Option<usize>,
        layer: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let _ = layer;
        let py = key.py();
        let graph = match dsk.cast_exact::<PyDict>() {
            Ok(graph) => graph.clone(),
            Err(_) => py.get_type::<PyDict>().call1((dsk,))?.cast_into()?,
        };
        catch_panics(|| Ok(Delayed::new(graph_node(&graph, key)?, length, Role::Value)))
    }

    /// Makes numpy defer to our reflected operators (`array @ delayed` builds a task) instead of
    /// treating a `Delayed` as a 0-d object array.
    #[classattr]
    fn __array_ufunc__(py: Python<'_>) -> Py<PyAny> {
        py.None()
    }

    #[getter(key)]
    fn py_key<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        self.key_object(py)
    }

    /// dask's private name for `key`, which libraries read.
    #[getter(_key)]
    fn private_key<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        self.key_object(py)
    }

    /// dask's private name for the length given as `nout`.
    #[getter(_length)]
    fn private_length(&self) -> Option<usize> {
        self.length()
    }

    /// dask's private name for the `nout` a `delayed(obj)` was given, which its pickling tests read: a
    /// delayed function's calls get it; any other value has it as its length.
    #[getter(_nout)]
    fn private_nout(&self) -> Option<usize> {
        match self.role() {
            Role::Function { options, .. } => options.nout,
            _ => self.length(),
        }
    }

    /// dask's private name for the `pure` a `delayed(func)` was given (None: the configuration's).
    #[getter(_pure)]
    fn private_pure(&self) -> Option<bool> {
        match self.role() {
            Role::Function { options, .. } => options.pure,
            _ => None,
        }
    }

    /// dask's private names of an attribute read (`x.real`): the object it is read from, and its name.
    #[getter(_obj)]
    fn private_obj<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, Delayed>> {
        match self.role() {
            Role::Attribute { obj, .. } => {
                Delayed::new(Arc::clone(obj), None, Role::Value).into_python(py)
            }
            _ => Err(PyAttributeError::new_err("Attribute _obj not found")),
        }
    }

    #[getter(_attr)]
    fn private_attr<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyString>> {
        match self.role() {
            Role::Attribute { name, .. } => Ok(name.bind(py).clone()),
            _ => Err(PyAttributeError::new_err("Attribute _attr not found")),
        }
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.traverse(visit)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!("Delayed({})", self.key_object(py).repr()?))
    }

    fn __hash__(&self, py: Python<'_>) -> PyResult<isize> {
        self.key_object(py).hash()
    }

    #[pyo3(signature = (*args, **kwargs))]
    fn __call__<'py>(
        slf: &Bound<'py, Self>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Bound<'py, Delayed>> {
        let py = slf.py();
        let this = slf.get();
        let (pure, key_name, kwargs) = split_options(kwargs)?;
        let spec = |options: CallOptions| CallSpec {
            pure: pure.or(options.pure),
            key_name: key_name.clone(),
            nout: options.nout,
            // As dask: `traverse=` is `delayed(value)`'s; a call always looks inside its arguments.
            traverse: true,
            args,
            kwargs: kwargs.clone(),
        };
        let plain = CallOptions {
            pure: None,
            nout: None,
        };
        let call = match this.role() {
            Role::Function { func, options } => build_call(
                py,
                CallTarget::Function {
                    func: func.bind(py),
                    leaf: this.node(),
                },
                spec(*options),
            ),
            Role::Attribute { obj, name } => {
                build_call(py, CallTarget::Method { obj, name }, spec(plain))
            }
            Role::Value => build_call(py, CallTarget::Value(slf.as_any()), spec(plain)),
        }?;
        call.into_python(py)
    }

    /// `obj.name`: a pure `getattr` task (so `x.n` twice is one task, as in dask); called, a method call.
    fn __getattr__(slf: &Bound<'_, Self>, name: Bound<'_, PyString>) -> PyResult<Py<Delayed>> {
        let py = slf.py();
        let text = name.to_str()?;
        if text.starts_with('_') {
            return Err(PyAttributeError::new_err(format!(
                "Attribute {name} not found"
            )));
        }
        if text == "visualise" {
            PyErr::warn(
                py,
                &py.get_type::<PyUserWarning>(),
                c"dask.delayed objects have no `visualise` method. Perhaps you meant `visualize`?",
                1,
            )?;
        }
        static GETATTR: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let getattr = GETATTR.import(py, "builtins", "getattr")?;
        let attribute = build_call(
            py,
            CallTarget::Operator {
                func: getattr,
                name: "getattr",
            },
            CallSpec {
                pure: Some(true),
                key_name: None,
                nout: None,
                traverse: false,
                args: &PyTuple::new(py, [slf.as_any(), name.as_any()])?,
                kwargs: None,
            },
        )?;
        let attribute = attribute.with_role(Role::Attribute {
            obj: Arc::clone(slf.get().node()),
            name: name.unbind(),
        });
        Ok(attribute.into_python(py)?.unbind())
    }

    fn __setitem__(&self, _index: &Bound<'_, PyAny>, _value: &Bound<'_, PyAny>) -> PyResult<()> {
        Err(PyTypeError::new_err("Delayed objects are immutable"))
    }

    fn __delitem__(&self, _index: &Bound<'_, PyAny>) -> PyResult<()> {
        Err(PyTypeError::new_err("Delayed objects are immutable"))
    }

    fn __setattr__(&self, _name: &Bound<'_, PyAny>, _value: &Bound<'_, PyAny>) -> PyResult<()> {
        Err(PyTypeError::new_err("Delayed objects are immutable"))
    }

    fn __delattr__(&self, _name: &Bound<'_, PyAny>) -> PyResult<()> {
        Err(PyTypeError::new_err("Delayed objects are immutable"))
    }

    fn __add__(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>) -> PyResult<Py<Delayed>> {
        Delayed::binary(slf, "add", other, false)
    }

    fn __radd__(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>) -> PyResult<Py<Delayed>> {
        Delayed::binary(slf, "add", other, true)
    }

    fn __sub__(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>) -> PyResult<Py<Delayed>> {
        Delayed::binary(slf, "sub", other, false)
    }

    fn __rsub__(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>) -> PyResult<Py<Delayed>> {
        Delayed::binary(slf, "sub", other, true)
    }

    fn __mul__(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>) -> PyResult<Py<Delayed>> {
        Delayed::binary(slf, "mul", other, false)
    }

    fn __rmul__(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>) -> PyResult<Py<Delayed>> {
        Delayed::binary(slf, "mul", other, true)
    }

    fn __matmul__(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>) -> PyResult<Py<Delayed>> {
        Delayed::binary(slf, "matmul", other, false)
    }

    fn __rmatmul__(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>) -> PyResult<Py<Delayed>> {
        Delayed::binary(slf, "matmul", other, true)
    }

    fn __truediv__(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>) -> PyResult<Py<Delayed>> {
        Delayed::binary(slf, "truediv", other, false)
    }

    fn __rtruediv__(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>) -> PyResult<Py<Delayed>> {
        Delayed::binary(slf, "truediv", other, true)
    }

    fn __floordiv__(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>) -> PyResult<Py<Delayed>> {
        Delayed::binary(slf, "floordiv", other, false)
    }

    fn __rfloordiv__(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>) -> PyResult<Py<Delayed>> {
        Delayed::binary(slf, "floordiv", other, true)
    }

    fn __mod__(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>) -> PyResult<Py<Delayed>> {
        Delayed::binary(slf, "mod", other, false)
    }

    fn __rmod__(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>) -> PyResult<Py<Delayed>> {
        Delayed::binary(slf, "mod", other, true)
    }

    fn __lshift__(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>) -> PyResult<Py<Delayed>> {
        Delayed::binary(slf, "lshift", other, false)
    }

    fn __rlshift__(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>) -> PyResult<Py<Delayed>> {
        Delayed::binary(slf, "lshift", other, true)
    }

    fn __rshift__(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>) -> PyResult<Py<Delayed>> {
        Delayed::binary(slf, "rshift", other, false)
    }

    fn __rrshift__(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>) -> PyResult<Py<Delayed>> {
        Delayed::binary(slf, "rshift", other, true)
    }

    fn __and__(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>) -> PyResult<Py<Delayed>> {
        Delayed::binary(slf, "and_", other, false)
    }

    fn __rand__(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>) -> PyResult<Py<Delayed>> {
        Delayed::binary(slf, "and_", other, true)
    }

    fn __xor__(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>) -> PyResult<Py<Delayed>> {
        Delayed::binary(slf, "xor", other, false)
    }

    fn __rxor__(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>) -> PyResult<Py<Delayed>> {
        Delayed::binary(slf, "xor", other, true)
    }

    fn __or__(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>) -> PyResult<Py<Delayed>> {
        Delayed::binary(slf, "or_", other, false)
    }

    fn __ror__(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>) -> PyResult<Py<Delayed>> {
        Delayed::binary(slf, "or_", other, true)
    }

    fn __getitem__(slf: &Bound<'_, Self>, index: &Bound<'_, PyAny>) -> PyResult<Py<Delayed>> {
        Delayed::binary(slf, "getitem", index, false)
    }

    fn __bool__(&self) -> PyResult<bool> {
        Err(PyTypeError::new_err(
            "Truth of Delayed objects is not supported",
        ))
    }

    fn __len__(&self) -> PyResult<usize> {
        self.length().ok_or_else(|| {
            PyTypeError::new_err("Delayed objects of unspecified length have no len()")
        })
    }

    fn __iter__(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let length = slf.get().length().ok_or_else(|| {
            PyTypeError::new_err("Delayed objects of unspecified length are not iterable")
        })?;
        // Item by item, as dask does: a huge nout must not build every item up front.
        let builtins = py.import("builtins")?;
        let indices = builtins.getattr("range")?.call1((length,))?;
        let items = builtins
            .getattr("map")?
            .call1((slf.getattr("__getitem__")?, indices))?;
        Ok(items.unbind())
    }

    fn __richcmp__(
        slf: &Bound<'_, Self>,
        other: &Bound<'_, PyAny>,
        op: CompareOp,
    ) -> PyResult<Py<Delayed>> {
        let name = match op {
            CompareOp::Lt => "lt",
            CompareOp::Le => "le",
            CompareOp::Eq => "eq",
            CompareOp::Ne => "ne",
            CompareOp::Gt => "gt",
            CompareOp::Ge => "ge",
        };
        Delayed::binary(slf, name, other, false)
    }

    fn __pow__(
        slf: &Bound<'_, Self>,
        other: &Bound<'_, PyAny>,
        modulo: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<Delayed>> {
        reject_modulo(modulo)?;
        Delayed::binary(slf, "pow", other, false)
    }

    fn __rpow__(
        slf: &Bound<'_, Self>,
        other: &Bound<'_, PyAny>,
        modulo: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<Delayed>> {
        reject_modulo(modulo)?;
        Delayed::binary(slf, "pow", other, true)
    }

    fn __neg__(slf: &Bound<'_, Self>) -> PyResult<Py<Delayed>> {
        slf.get().operator(slf.py(), "neg", &[slf.as_any()])
    }

    fn __pos__(slf: &Bound<'_, Self>) -> PyResult<Py<Delayed>> {
        slf.get().operator(slf.py(), "pos", &[slf.as_any()])
    }

    fn __invert__(slf: &Bound<'_, Self>) -> PyResult<Py<Delayed>> {
        slf.get().operator(slf.py(), "invert", &[slf.as_any()])
    }

    fn __abs__(slf: &Bound<'_, Self>) -> PyResult<Py<Delayed>> {
        slf.get().operator(slf.py(), "abs", &[slf.as_any()])
    }

    /// `@delayed` on a method: looking it up on an instance binds the instance as the first argument.
    fn __get__(
        slf: &Bound<'_, Self>,
        instance: Option<&Bound<'_, PyAny>>,
        _owner: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        match (instance, slf.get().role()) {
            (Some(instance), Role::Function { .. }) if !instance.is_none() => {
                static METHOD_TYPE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
                let method_type = METHOD_TYPE.import(py, "types", "MethodType")?;
                Ok(method_type.call1((slf, instance))?.unbind())
            }
            _ => Ok(slf.clone().into_any().unbind()),
        }
    }

    #[getter(__name__)]
    fn name(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.forwarded(py, "__name__")
    }

    #[getter(__qualname__)]
    fn qualname(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.forwarded(py, "__qualname__")
    }

    /// The class docstring on the class (`help(belated.Delayed)`), the function's on `delayed(func)`.
    #[classattr]
    fn __doc__(py: Python<'_>) -> PyResult<Py<PyAny>> {
        forwarded_attribute(py, CLASS_DOC, "__doc__")
    }

    /// `"belated"` on the class, the function's module on `delayed(func)`.
    #[classattr]
    fn __module__(py: Python<'_>) -> PyResult<Py<PyAny>> {
        forwarded_attribute(py, "belated", "__module__")
    }

    #[getter(__wrapped__)]
    fn wrapped(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.function(py)
            .map(Bound::unbind)
            .ok_or_else(|| PyAttributeError::new_err("Attribute __wrapped__ not found"))
    }

    /// The function's signature on `delayed(func)`; on the class, None, so that `inspect.signature`
    /// reads the constructor's (a getter would hand it a descriptor object there, a TypeError).
    #[classattr]
    fn __signature__(py: Python<'_>) -> PyResult<Py<PyAny>> {
        static SIGNATURE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        Ok(SIGNATURE
            .import(py, "belated._forward", "ForwardedSignature")?
            .call0()?
            .unbind())
    }

    /// The graph behind this value, as dask's legacy graph spec: key → task tuple or literal, with
    /// dependencies referred to by key.
    #[getter]
    fn dask<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        catch_panics(|| Ok(LegacyGraph::new(py, &self.plan(py)?)?.tasks))
    }

    // The dask collection protocol, so that dask.compute, dask.delayed and distributed accept belated
    // objects. The graph is `.dask`; dask runs it with its own schedulers.
    #[pyo3(name = "__dask_graph__")]
    fn dask_graph<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        catch_panics(|| Ok(LegacyGraph::new(py, &self.plan(py)?)?.tasks))
    }

    #[pyo3(name = "__dask_keys__")]
    fn dask_keys<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(py, [self.key_object(py)])
    }

    #[pyo3(name = "__dask_layers__")]
    fn dask_layers(&self, py: Python<'_>) -> (String,) {
        (self.key(py),)
    }

    #[pyo3(name = "__dask_tokenize__")]
    fn dask_tokenize<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        self.key_object(py)
    }

    #[pyo3(name = "__dask_postcompute__")]
    fn dask_postcompute<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        static FIRST: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        Ok((
            FIRST.import(py, "belated._dask", "first")?.clone(),
            PyTuple::empty(py),
        ))
    }

    #[pyo3(name = "__dask_postpersist__")]
    fn dask_postpersist<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        static REBUILD: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let args = (self.key_object(py), self.length()).into_pyobject(py)?;
        Ok((
            REBUILD.import(py, "belated._dask", "rebuild")?.clone(),
            args,
        ))
    }

    #[getter(__dask_scheduler__)]
    fn dask_scheduler<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        static GET: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        Ok(GET.import(py, "dask.threaded", "get")?.clone())
    }

    #[getter(__dask_optimize__)]
    fn dask_optimize<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        static OPTIMIZE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        Ok(OPTIMIZE.import(py, "belated._dask", "optimize")?.clone())
    }

    /// `await x`, as dask's collections: waits for the results a persist is still computing, then
    /// gives `x` itself.
    fn __await__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        static AWAITED: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        AWAITED
            .import(slf.py(), "belated._dask", "awaited")?
            .call1((slf,))
    }

    fn __reduce__<'py>(
        slf: &Bound<'py, Self>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        catch_panics(|| pickle::reduce(slf))
    }

    /// Computes this value; keyword arguments are those of `belated.compute`.
    #[pyo3(signature = (**kwargs))]
    fn compute(slf: &Bound<'_, Self>, kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Py<PyAny>> {
        static COMPUTE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let compute = COMPUTE.import(slf.py(), "belated", "compute")?;
        Ok(compute.call((slf,), kwargs)?.get_item(0)?.unbind())
    }

    /// Draws this value's graph; keyword arguments are those of `belated.visualize`.
    #[pyo3(signature = (**kwargs))]
    fn visualize(slf: &Bound<'_, Self>, kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Py<PyAny>> {
        static VISUALIZE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let visualize = VISUALIZE.import(slf.py(), "belated", "visualize")?;
        Ok(visualize.call((slf,), kwargs)?.unbind())
    }

    /// Computes this value and returns a `Delayed` that holds the result under the same key.
    #[pyo3(signature = (**kwargs))]
    fn persist(slf: &Bound<'_, Self>, kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Py<PyAny>> {
        static PERSIST: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let persist = PERSIST.import(slf.py(), "belated", "persist")?;
        Ok(persist.call((slf,), kwargs)?.get_item(0)?.unbind())
    }
}

fn reject_modulo(modulo: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
    match modulo {
        Some(m) if !m.is_none() => Err(PyTypeError::new_err(
            "pow() with a modulo is not supported on Delayed objects",
        )),
        _ => Ok(()),
    }
}

/// Whether `obj` is a `dask._task_spec.TaskRef` (what distributed's futures are), once the program
/// has loaded dask.
fn is_task_ref(obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    static TASK_REF: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    static MODULES: PyOnceLock<Py<PyDict>> = PyOnceLock::new();
    let py = obj.py();
    let task_ref = match TASK_REF.get(py) {
        Some(task_ref) => task_ref.bind(py).clone(),
        None => {
            // Until dask is loaded this runs on every `delayed(obj)`: one lookup in `sys.modules`
            // (kept; an import or a `KeyError` costs a microsecond, twice `delayed` itself).
            let modules = MODULES.get_or_try_init(py, || {
                py.import("sys")?
                    .getattr("modules")?
                    .cast_into::<PyDict>()
                    .map(Bound::unbind)
                    .map_err(PyErr::from)
            })?;
            let Some(spec) = modules.bind(py).get_item(intern!(py, "dask._task_spec"))? else {
                return Ok(false);
            };
            let task_ref = spec.getattr("TaskRef")?.cast_into::<PyType>()?;
            TASK_REF.get_or_init(py, || task_ref.clone().unbind());
            task_ref
        }
    };
    obj.is_instance(&task_ref)
}

/// Wraps a function or a value so that calls and operations on it build a task graph instead of
/// running, as `dask.delayed` does.
///
/// `delayed(f)(x, y)` is a `Delayed` whose task calls `f(x, y)` when computed; `delayed(value)` is one
/// holding `value`. Arguments may be `Delayed` objects, or containers holding them, which become the
/// task's dependencies. With no `obj`, returns the decorator with these options
/// (`@delayed(pure=True)`).
///
/// Parameters
/// ----------
/// obj : callable or object, optional
///     The function to call lazily, or the value to hold.
/// name : str or tuple, optional
///     The key of the result (for a value or a call; for a function, the prefix of its calls' keys).
/// pure : bool, optional
///     Whether the key is a hash of the function and arguments, so equal calls share one task. Default
///     `belated.config` `delayed_pure`, else `False` (a fresh key per call). A function that can't be
///     hashed deterministically gets a unique key rather than one shared by mistake.
/// nout : int, optional
///     How many items the call returns, so the result can be unpacked or iterated.
/// traverse : bool
///     Whether to look for `Delayed` objects inside `obj` when it is a container. A function's calls
///     always look inside their container arguments, as in dask.
///
/// Returns
/// -------
/// Delayed
///     The lazy function or value; with no `obj`, a decorator returning one.
///
/// Raises
/// ------
/// ValueError
///     For a `nout` that is not a non-negative integer.
/// TypeError
///     For a `name` that can't be a key (one that isn't hashable).
///
/// Examples
/// --------
/// >>> from belated import delayed
/// >>> def inc(x):
/// ...     return x + 1
/// >>> total = delayed(inc)(1) + delayed(inc)(2)
/// >>> total.compute()
/// 5
#[pyfunction]
#[pyo3(signature = (*obj, name=None, pure=None, nout=None, traverse=Truthy(true)))]
pub(crate) fn delayed(
    py: Python<'_>,
    obj: &Bound<'_, PyTuple>,
    name: Option<Bound<'_, PyAny>>,
    pure: Option<Truthy>,
    nout: Option<&Bound<'_, PyAny>>,
    traverse: Truthy,
) -> PyResult<Py<PyAny>> {
    let (pure, traverse) = (pure.map(|pure| pure.0), traverse.0);
    let nout = nout.filter(|n| !n.is_none()).map(item_count).transpose()?;
    let obj = match obj.len() {
        0 => {
            static PARTIAL: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
            let options = PyDict::new(py);
            options.set_item("name", name)?;
            options.set_item("pure", pure)?;
            options.set_item("nout", nout)?;
            options.set_item("traverse", traverse)?;
            let this = py.import("belated._belated")?.getattr("delayed")?;
            return Ok(PARTIAL
                .import(py, "functools", "partial")?
                .call((this,), Some(&options))?
                .unbind());
        }
        1 => obj.get_item(0)?,
        n => {
            return Err(PyTypeError::new_err(format!(
                "delayed() takes one object to wrap, got {n}"
            )))
        }
    };
    if obj.is_instance_of::<Delayed>() {
        return Ok(obj.unbind());
    }
    let mut collector = Collector::new(traverse);
    let template = collector.arg(&obj)?;
    // As dask: a plain object is tokenized with its `nout`, a container of `Delayed` objects by itself.
    let key = match name.filter(|n| !n.is_none()) {
        Some(name) => Key::given(&name)?,
        // As dask: a reference to a task elsewhere (a distributed future) keeps its key.
        None if is_task_ref(&obj)? => Key::given(&obj.getattr("key")?)?,
        None if resolve_pure(py, pure)? => {
            let (prefix, head) = if template.is_value() {
                (
                    value_prefix(&obj),
                    vec![
                        Part::Object(obj.clone()),
                        Part::Object(nout.into_pyobject(py)?.into_any()),
                    ],
                )
            } else {
                (
                    obj.get_type().name()?.to_string(),
                    vec![Part::Object(obj.clone())],
                )
            };
            let token = token::call_token(py, &head, &PyTuple::empty(py), None)?;
            Key::Named(token::key_text(&prefix, &token))
        }
        None => Key::unique(),
    };
    let role = match &template {
        Arg::Value(func) if obj.is_callable() => Role::Function {
            func: func.clone_ref(py),
            options: CallOptions { pure, nout },
        },
        _ => Role::Value,
    };
    let task = PyTask::new(py, key, Op::Value(template), &collector.deps);
    let node = TaskNode::new(task, collector.deps);
    Ok(Delayed::new(node, nout, role)
        .into_python(py)?
        .into_any()
        .unbind())
}

/// `nout` as dask takes it: an `int` (not a bool or another subclass), not negative. One above
/// `sys.maxsize` could never be unpacked or given a `len()`, so it is refused here rather than later.
fn item_count(nout: &Bound<'_, PyAny>) -> PyResult<usize> {
    let refused = || {
        PyValueError::new_err(format!(
            "nout must be None or a non-negative integer, got {}",
            nout.str().map(|s| s.to_string()).unwrap_or_default()
        ))
    };
    let count = nout.cast_exact::<PyInt>().map_err(|_| refused())?;
    if count.lt(0)? {
        return Err(refused());
    }
    count
        .extract::<isize>()
        .ok()
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| {
            PyValueError::new_err(format!(
                "nout must be at most sys.maxsize ({}), the most items a sequence can have, got {nout}",
                isize::MAX
            ))
        })
}

const CLASS_DOC: &str = "A lazy value: the result of a task that runs when computed.

``delayed(obj)`` makes one; calling a delayed function, reading an attribute, indexing and operators
make more. ``.compute()`` runs the tasks a value needs and returns its result. ``Delayed[T]`` is the
type of one that computes to a ``T``.";

/// A class attribute that is `value` on the class and the wrapped function's `name` on instances
/// (see `belated._forward`).
fn forwarded_attribute(py: Python<'_>, value: &str, name: &str) -> PyResult<Py<PyAny>> {
    static FORWARDED: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    Ok(FORWARDED
        .import(py, "belated._forward", "Forwarded")?
        .call1((value, name))?
        .unbind())
}
