"""dask's ``graph_manipulation`` for ``Delayed`` objects, done in the engine.

Waiting is a dependency that carries no data: a task that waits for another runs after it and is not
given its value. Binding and cloning copy tasks under new keys, so that a value is computed again
instead of being kept in memory.

>>> from belated import delayed
>>> from belated.graph_manipulation import bind, checkpoint, clone, wait_on
>>> events = []
>>> first = delayed(events.append)("first")
>>> second = bind(delayed(events.append)("second"), first)
>>> second.compute(), events
(None, ['first', 'second'])
>>> checkpoint(first, second).compute() is None
True
"""

import re
import uuid

from belated import _belated
from belated._belated import Delayed
from belated._tokenize import tokenize

__all__ = ["bind", "checkpoint", "clone", "wait_on"]

_TOKEN = re.compile(r"-(?:[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$")


def checkpoint(*collections, split_every=None):
    """A ``Delayed`` that computes to ``None`` once everything in ``collections`` (``Delayed`` objects
    or structures holding them) has been computed. With other dask collections among them, this is
    dask's own ``checkpoint`` (and likewise for ``wait_on``, ``bind`` and ``clone``).

    ``split_every`` is validated as in dask and otherwise unused: a task here may wait for any number of
    others directly, so no aggregation tree is needed.
    """
    if _foreign(collections):
        return _dask_function("checkpoint")(*collections, split_every=split_every)
    _check_split_every(split_every)
    return _belated.waiting(None, collections, f"checkpoint-{tokenize(*collections)}")


def wait_on(*collections, split_every=None):
    """The ``Delayed`` objects of ``collections`` (the same structures), each computing to the same
    value but only after everything in ``collections`` has been computed. One argument gives one
    result, several give a tuple."""
    if _foreign(collections):
        return _dask_function("wait_on")(*collections, split_every=split_every)
    blocker = checkpoint(*collections, split_every=split_every)
    token = tokenize(blocker)

    def wait(value):
        name = f"wait_on-{tokenize(value, token)}"
        return _belated.waiting(value, (blocker,), name, nout=_length(value))

    out = tuple(_replace_delayed(collection, wait) for collection in collections)
    return out[0] if len(collections) == 1 else out


def bind(children, parents, *, omit=None, seed=None, assume_layers=True, split_every=None):
    """Copies of ``children`` (a ``Delayed`` or a structure of them) that compute the same values with
    new tasks under new keys, the first of which wait until ``parents`` have been computed.

    The tasks of ``omit`` (and those they depend on) are not copied: the copies use them as they are.
    ``seed`` makes the new keys reproducible; by default they differ at every call.
    ``assume_layers`` is accepted for dask compatibility (the engine always works at task level).
    """
    if _foreign((children, parents, omit)):
        return _dask_function("bind")(
            children, parents, omit=omit, seed=seed, assume_layers=assume_layers, split_every=split_every
        )
    blocker = None if parents is None else checkpoint(parents, split_every=split_every)
    return _copy(children, blocker, omit, seed)


def clone(*collections, omit=None, seed=None, assume_layers=True):
    """Copies of ``collections`` computed by new tasks under new keys, as in dask: a value needed
    early and late can be computed twice instead of kept in memory. ``omit``: tasks not copied."""
    if _foreign((collections, omit)):
        return _dask_function("clone")(*collections, omit=omit, seed=seed, assume_layers=assume_layers)
    out = _copy(collections, None, omit, seed)
    return out[0] if len(collections) == 1 else out


def _copy(children, blocker, omit, seed):
    if seed is None:
        seed = uuid.uuid4().hex
    found = _delayed_in(children)
    copies = _belated.bind(found, blocker, _delayed_in(omit), lambda key: _clone_key(key, seed))
    by_id = {id(original): copy for original, copy in zip(found, copies, strict=True)}
    return _replace_delayed(children, lambda value: by_id[id(value)])


def _clone_key(key, seed):
    if isinstance(key, tuple) and key and isinstance(key[0], str):
        return (_clone_key(key[0], seed), *key[1:])
    text = str(key)
    return f"{_TOKEN.sub('', text)}-{tokenize(key, seed)}"


def _check_split_every(split_every):
    if split_every is not None and split_every is not False and int(split_every) < 2:
        raise ValueError("split_every must be False, None, or >= 2")


def _length(value):
    return value._length if isinstance(value, Delayed) else None


def _delayed_in(obj):
    found = []
    _replace_delayed(obj, lambda value: found.append(value) or value)
    return found


def _foreign(obj):
    """Whether ``obj`` holds dask collections other than belated's ``Delayed`` (in lists, tuples, sets
    and dicts): those calls are dask's own, which rebuilds every collection (belated's through the dask
    protocol), so that ``import belated as dask`` code binding arrays or bags keeps working."""
    if isinstance(obj, Delayed):
        return False
    if type(obj) in (list, tuple, set):
        return any(_foreign(item) for item in obj)
    if type(obj) is dict:
        return any(_foreign(value) for value in obj.values())
    return hasattr(type(obj), "__dask_graph__")


def _dask_function(name):
    import dask.graph_manipulation

    return getattr(dask.graph_manipulation, name)


def _replace_delayed(obj, replace):
    """``obj`` with every ``Delayed`` inside lists, tuples, sets and dicts replaced by ``replace(it)``."""
    if isinstance(obj, Delayed):
        return replace(obj)
    if type(obj) in (list, tuple, set):
        return type(obj)(_replace_delayed(item, replace) for item in obj)
    if type(obj) is dict:
        return {key: _replace_delayed(value, replace) for key, value in obj.items()}
    return obj
