"""Deterministic tokens for pure calls: equal arguments give equal keys, in any process.

Objects are reduced to a canonical form (type and content), which is hashed. Objects with no canonical
form that can be pickled are hashed by their pickle; the rest get a random token, so such a call is
treated as impure rather than wrongly merged with another.
"""

import hashlib
import pickle
import types
import uuid

from belated._belated import Delayed

_SCALARS = (type(None), bool, int, float, complex, str, bytes)


def tokenize(*args, **kwargs) -> str:
    """A hex token identifying ``args`` and ``kwargs`` by value."""
    return hashlib.md5(repr(_normalize((args, kwargs))).encode(), usedforsecurity=False).hexdigest()


def _normalize(obj):
    if isinstance(obj, Delayed):
        return ("Delayed", obj.key)
    if type(obj) in _SCALARS:
        return (type(obj).__name__, repr(obj))
    if hasattr(type(obj), "__dask_tokenize__"):
        return ("custom", _normalize(obj.__dask_tokenize__()))
    if type(obj) in (list, tuple):
        return (type(obj).__name__, [_normalize(item) for item in obj])
    if type(obj) is dict:
        return ("dict", sorted((repr(_normalize(k)), _normalize(v)) for k, v in obj.items()))
    if type(obj) in (set, frozenset):
        return (type(obj).__name__, sorted(repr(_normalize(item)) for item in obj))
    if isinstance(obj, types.FunctionType | types.BuiltinFunctionType | type):
        return _normalize_callable(obj)
    array = _normalize_array(obj)
    if array is not None:
        return array
    return _by_pickle(obj)


def _normalize_callable(func):
    module, qualname = getattr(func, "__module__", None), getattr(func, "__qualname__", None)
    if module and qualname and "<" not in qualname:
        return ("callable", module, qualname)
    code = getattr(func, "__code__", None)
    if code is not None:
        return ("code", module, code.co_code, repr(code.co_consts), _normalize(func.__defaults__))
    return _by_pickle(func)


def _normalize_array(obj):
    module = type(obj).__module__
    if module == "numpy" and type(obj).__name__ == "ndarray" and obj.dtype.hasobject is False:
        data = obj if obj.flags.c_contiguous else obj.copy(order="C")
        digest = hashlib.sha1(data.view("uint8").reshape(-1), usedforsecurity=False).hexdigest()
        return ("ndarray", obj.dtype.str, obj.shape, digest)
    return None


def _by_pickle(obj):
    try:
        data = pickle.dumps(obj, protocol=5)
    except Exception:
        return ("unique", uuid.uuid4().hex)
    return ("pickle", hashlib.sha1(data, usedforsecurity=False).hexdigest())
