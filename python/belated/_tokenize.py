"""Deterministic tokens for pure calls: equal arguments give equal keys, in any process.

Objects are reduced to a canonical form (type and content), which is hashed. A function is identified
by its module and qualified name when that name imports it (as pickle would refer to it); otherwise by
what decides its behaviour: its code, the values of its closure, its defaults, its attributes (which
its code can read through its own name) and the globals its code names. Objects with no canonical form
whose pickle, loaded, is the same twice are hashed by it. Whatever is left gets a random token, so such
a call is treated as impure rather than wrongly merged with another.
"""

import contextlib
import contextvars
import fractions
import functools
import hashlib
import numbers
import pickle
import sys
import types
import uuid

from belated._belated import Delayed

_SCALARS = (type(None), bool, int, float, complex, str, bytes, type(Ellipsis))


# Every bare object() that was tokenized (see _Normalizer.normalize).
_SENTINELS = set()


class TokenizationError(RuntimeError):
    """Raised by ``tokenize(..., ensure_deterministic=True)`` for objects with no deterministic token."""


class _Unique(Exception):
    """Raised inside normalization when a part (the argument, where known) has no deterministic form:
    the token becomes random."""


def tokenize(*args, ensure_deterministic=None, **kwargs) -> str:
    """A hex token identifying ``args`` and ``kwargs`` by value, as ``dask.base.tokenize``: equal
    values give equal tokens, in any process. Objects that cannot be identified get a random token, or
    raise :class:`TokenizationError` with ``ensure_deterministic=True`` (by default, the
    ``tokenize.ensure-deterministic`` configuration of ``belated.config``, else of dask's).

    >>> from belated import tokenize
    >>> tokenize([1, "a"]) == tokenize([1, "a"]), tokenize([1, "a"]) == tokenize([1, "b"])
    (True, False)
    """
    try:
        # A tokenize inside an object's __dask_tokenize__ follows the call tokenizing that object, as in
        # dask (where that call is dask's, its setting is read from dask).
        ensure_deterministic = _ENSURE_DETERMINISTIC.get()
    except LookupError:
        ensure_deterministic = _dask_ensure_deterministic(ensure_deterministic)
    if ensure_deterministic is None:
        ensure_deterministic = _configured_deterministic()
    ensure_deterministic = bool(ensure_deterministic)
    with _ensuring(ensure_deterministic):
        try:
            return _digest(args, kwargs, deterministic=ensure_deterministic)
        except _Unique as unique:
            if ensure_deterministic:
                # dask's words, which a ported program's tests may match
                culprit = unique.args[0] if unique.args else args
                raise _error_class()(f"{culprit!r} cannot be deterministically hashed") from None
            return uuid.uuid4().hex


_ENSURE_DETERMINISTIC = contextvars.ContextVar("belated_tokenize_ensure_deterministic")


def key_number(part):
    """The simplest number equal to ``part`` (an int, else a float, else a ``Fraction``; a complex
    number only where its imaginary part is not zero), or ``part`` itself where it is no number: keys
    merge by the text of their parts in this form, so that keys equal in Python (``("x", 1)``,
    ``("x", 1.0)``, ``("x", np.int64(1))``) are one task, as they are one key of dask's graphs."""
    if not isinstance(part, numbers.Number):
        return part
    if isinstance(part, numbers.Complex) and not isinstance(part, numbers.Real):
        if part.imag != 0:
            return complex(part)
        part = part.real
    for simpler in (int, float, fractions.Fraction):
        try:
            number = simpler(part)
            if number == part:
                return number
        except (TypeError, ValueError, ArithmeticError):
            continue
    return part


def _dask_ensure_deterministic(default):
    """What a ``dask.tokenize.tokenize`` call under way decided, else ``default``."""
    dask_tokenize = sys.modules.get("dask.tokenize")
    variable = getattr(dask_tokenize, "_ENSURE_DETERMINISTIC", None)
    return default if variable is None else variable.get(default)


@contextlib.contextmanager
def _ensuring(ensure_deterministic):
    """``ensure_deterministic`` for the tokenize calls made meanwhile: belated's own, and dask's (and
    the functions registered with dask's ``normalize_token``, which read dask's setting otherwise)."""
    variables = [_ENSURE_DETERMINISTIC]
    dask_tokenize = sys.modules.get("dask.tokenize")
    if getattr(dask_tokenize, "_ENSURE_DETERMINISTIC", None) is not None:
        variables.append(dask_tokenize._ENSURE_DETERMINISTIC)
    tokens = [(variable, variable.set(ensure_deterministic)) for variable in variables]
    try:
        yield
    finally:
        for variable, token in reversed(tokens):
            variable.reset(token)


# TokenizationError joined with dask's, made at the first error where dask is installed.
_joined_error = None


def _error_class():
    """:class:`TokenizationError`, which is also dask's where dask is installed: a ported program
    catches ``dask.tokenize.TokenizationError``."""
    global _joined_error
    if _joined_error is None:
        try:
            from dask.tokenize import TokenizationError as DaskTokenizationError
        except ImportError:
            return TokenizationError
        _joined_error = type(
            "_DaskTokenizationError",
            (TokenizationError, DaskTokenizationError),
            {"__module__": __name__, "__doc__": TokenizationError.__doc__},
        )
    return _joined_error


def __getattr__(name):
    # Where a pickled error finds its class, in a process that has not raised one yet.
    if name == "_DaskTokenizationError":
        return _error_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _configured_deterministic():
    """``tokenize.ensure-deterministic`` from ``belated.config`` (which reads dask's configuration where
    it does not set it), as ``dask.base.tokenize`` reads it."""
    from belated import config

    return bool(config._read("tokenize.ensure-deterministic", None))


def call_token(args, kwargs):
    """The token of a pure call (what identifies the callable, then its arguments); random when some
    part cannot be identified, so that the call is never merged with another."""
    try:
        return _digest(args, kwargs or {})
    except _Unique:
        return uuid.uuid4().hex


def _digest(args, kwargs, deterministic=False):
    try:
        normal = repr(_Normalizer(deterministic).normalize((args, kwargs)))
    except RecursionError:
        raise _Unique() from None
    return hashlib.md5(normal.encode(), usedforsecurity=False).hexdigest()


class _Normalizer:
    def __init__(self, deterministic):
        # Functions being normalized: a recursive function names itself among its globals.
        self.open_functions = set()
        # Whether a token that holds only in this process (a sentinel's) is refused.
        self.deterministic = deterministic
        # The lists and dicts being normalized, by id, with their depth: one that holds itself is
        # written as a reference to where it is open, as dask writes it.
        self.open_containers = {}

    def normalize(self, obj):
        kind = type(obj)
        if kind in _SCALARS:
            return (kind.__name__, repr(obj))
        if kind is Delayed:
            return ("Delayed", obj.key)
        if kind is tuple:
            return ("tuple", [self.normalize(item) for item in obj])
        if kind is list or kind is dict:
            depth = self.open_containers.get(id(obj))
            if depth is not None:
                return ("open", depth)
            self.open_containers[id(obj)] = len(self.open_containers)
            try:
                if kind is list:
                    return ("list", [self.normalize(item) for item in obj])
                items = obj.items()
                return ("dict", sorted((repr(self.normalize(k)), self.normalize(v)) for k, v in items))
            finally:
                del self.open_containers[id(obj)]
        if kind in (set, frozenset):
            return (kind.__name__, sorted(repr(self.normalize(item)) for item in obj))
        if kind is slice:
            return ("slice", [self.normalize(obj.start), self.normalize(obj.stop), self.normalize(obj.step)])
        method = getattr(kind, "__dask_tokenize__", None)
        if method is not None and not isinstance(obj, type):
            # A registration with dask's normalize_token comes first, as dask dispatches to it first.
            registered = _registered_with_dask(kind)
            if registered is not None:
                return self.registered(kind, registered, obj)
            return ("custom", self.normalize(obj.__dask_tokenize__()))
        if kind is object:
            if self.deterministic:
                raise _Unique(obj)
            # Bare object()s are sentinels, told apart by identity though their pickles are equal: as in
            # dask, each has a token of its own, kept while the process lives so its id is never reused.
            _SENTINELS.add(obj)
            return ("object", id(obj))
        if isinstance(obj, types.FunctionType):
            return self.function(obj)
        if isinstance(obj, functools.partial):
            parts = (obj.func, obj.args, obj.keywords)
            return ("partial", *[self.normalize(part) for part in parts])
        if isinstance(obj, types.MethodType | types.BuiltinMethodType | types.MethodWrapperType):
            owner = getattr(obj, "__self__", None)
            if owner is not None and not isinstance(owner, types.ModuleType):
                func = getattr(obj, "__func__", None) or obj.__name__
                return ("method", self.normalize(owner), self.normalize(func))
        if isinstance(obj, types.ModuleType):
            return ("module", obj.__name__)
        if isinstance(obj, types.CodeType):
            return self.code(obj)
        if isinstance(obj, type | types.BuiltinFunctionType) and _importable(obj):
            return ("importable", obj.__module__, obj.__qualname__)
        if isinstance(obj, type):
            # pickle would name the class only, and a class of __main__ redefined keeps its name.
            return ("class", _by_pickle(obj, by_value=True))
        array = _normalize_array(obj)
        if array is not None:
            return array
        registered = _registered_with_dask(kind)
        if registered is not None:
            return self.registered(kind, registered, obj)
        token = _by_pickle(obj)
        kind = type(obj)
        # pickle names the class of an instance; where the name does not identify it, the class counts.
        return token if _importable(kind) else (*token, self.normalize(kind))

    def registered(self, kind, registered, obj):
        try:
            normal = registered(obj)
        except RuntimeError as error:
            # dask's TokenizationError (under ensure_deterministic) is raised as belated's, which is
            # also dask's, with dask's message
            if isinstance(error, TokenizationError) or not isinstance(
                error, sys.modules["dask.tokenize"].TokenizationError
            ):
                raise
            raise _error_class()(*error.args) from None
        if type(normal) is kind:
            # dask registers int, float, datetime... (so also numpy's scalars and IntEnum, their
            # subclasses) as their own normal form, which its token reads as text: normalizing that
            # form again would never end
            return ("registered", self.normalize(kind), repr(normal))
        return ("registered", self.normalize(kind), self.normalize(normal))

    def function(self, func):
        if _importable(func):
            return ("function", func.__module__, func.__qualname__)
        if id(func) in self.open_functions:
            return ("recursive", func.__qualname__)
        self.open_functions.add(id(func))
        try:
            code = func.__code__
            cells = [self.normalize(cell.cell_contents) for cell in func.__closure__ or ()]
            named = {}
            for name in _global_names(code):
                if name in func.__globals__:
                    named[name] = self.normalize(func.__globals__[name])
            return (
                "code",
                func.__module__,
                func.__qualname__,
                self.code(code),
                cells,
                self.normalize(func.__defaults__),
                self.normalize(func.__kwdefaults__),
                self.normalize(func.__dict__),
                sorted(named.items()),
            )
        except ValueError:  # an empty closure cell: the function cannot run as it is
            raise _Unique(func) from None
        finally:
            self.open_functions.discard(id(func))

    def code(self, code):
        constants = [self.normalize(c) for c in code.co_consts]
        names = (code.co_names, code.co_varnames, code.co_freevars)
        # The same instructions take their arguments differently: `lambda *a: a` and `lambda a: a`.
        signature = (code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount, code.co_flags)
        return ("code object", code.co_code.hex(), constants, names, signature)


def _global_names(code):
    """The names a code object and the code nested in it look up (globals or attributes)."""
    names = set(code.co_names)
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            names.update(_global_names(constant))
    return sorted(names)


def _registered_with_dask(kind):
    """The function dask's ``normalize_token`` has for ``kind`` when one is registered for it (by the
    user or by dask, for pandas and others), where the program imported dask; else None. A type's
    registration says which of its objects are equal as dask keys them."""
    dask_tokenize = sys.modules.get("dask.tokenize")
    if dask_tokenize is None:
        return None
    dispatch = dask_tokenize.normalize_token.dispatch
    try:
        found = dispatch(kind)
    except TypeError:  # nothing registered, not even for object
        return None
    return None if found is dispatch(object) else found


def _importable(obj):
    """Whether ``module.qualname`` finds this very object, so the name identifies it. Not for
    ``__main__``, whose names are redefined as a notebook or script goes on."""
    module_name, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not module_name or not qualname or module_name == "__main__" or "<" in qualname:
        return False
    found = sys.modules.get(module_name)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return found is obj


def _normalize_array(obj):
    module = type(obj).__module__
    if module == "numpy" and type(obj).__name__ == "ndarray" and obj.dtype.hasobject is False:
        data = obj if obj.flags.c_contiguous else obj.copy(order="C")
        digest = hashlib.sha1(data.reshape(-1).view("uint8"), usedforsecurity=False).hexdigest()
        # So do the fields of a structured dtype, which its `str` leaves out.
        return ("ndarray", obj.dtype.str, repr(obj.dtype.descr), obj.shape, _layout(obj), digest)
    return None


def _layout(array):
    """The order memory holds an array's axes in, outermost first: the order ``ravel(order="K")``
    reads them in. The same numbers in C and Fortran order differ there; a slice with a step (or
    reversed) and its copy do not, though their strides do (as an empty array's do after pickling),
    and dask gives them one token."""
    strides = zip(array.strides, array.shape, strict=True)
    axes = sorted((-abs(stride), axis) for axis, (stride, size) in enumerate(strides) if size > 1)
    return tuple(axis for _, axis in axes)


def _by_pickle(obj, by_value=False):
    """The hash of the object's pickle (cloudpickle for what pickle refuses, and for classes that must
    be pickled ``by_value``), if two pickles agree."""
    import cloudpickle

    for dumps in (cloudpickle.dumps,) if by_value else (pickle.dumps, cloudpickle.dumps):
        # A class pickled by value changes with its first pickling and loading (copyreg caches its
        # __slotnames__ in it, cloudpickle sets its state again): as dask does, the pickle is loaded
        # until it is the same twice, the form it keeps once the value was sent to a process and back.
        try:
            out = dumps(obj, protocol=5)
            for _ in range(2):
                with contextlib.suppress(Exception):  # a type pickled by a name that does not import it
                    pickle.loads(out)
                again = dumps(obj, protocol=5)
                if again == out:
                    digest = hashlib.sha1(out, usedforsecurity=False).hexdigest()
                    return ("pickle", type(obj).__qualname__, digest)
                out = again
        except Exception:
            continue
    raise _Unique(obj)
