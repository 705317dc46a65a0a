"""What dask needs to run belated graphs, and belated to run dask's: the collection protocol's helpers
and the executors that hand a whole graph to an existing engine."""

from belated import _belated


class Literal:
    """A task returning a constant: how a list, tuple or string argument is written in a dask graph,
    where it would otherwise be read as a nested task, a list of keys or a key."""

    __slots__ = ("data",)

    def __init__(self, data):
        self.data = data

    def __call__(self):
        return self.data

    def __repr__(self):
        return f"Literal({self.data!r})"

    def __reduce__(self):
        return Literal, (self.data,)


def first(results):
    """``__dask_postcompute__``: a Delayed has one key, so one result."""
    return results[0]


def optimize(dsk, keys, **kwargs):
    """``__dask_optimize__``: belated graphs hold only what their keys need already."""
    return dsk


def rebuild(dsk, key, length, rename=None):
    """``__dask_postpersist__``: a Delayed holding the persisted value under its key."""
    key = (rename or {}).get(key, key)
    return _belated.delayed(dsk[key], name=key, nout=length, traverse=False)


def compute_collection(collection):
    """Computes a dask collection found among a belated call's arguments, inside the belated task."""
    import dask

    return dask.compute(collection, scheduler="sync")[0]
