"""Delayed objects travel by pickle and cloudpickle, keys and all."""

import pickle

import pytest

from belated import Delayed, delayed


def inc(x):
    return x + 1


def test_pickle_round_trip_keeps_keys_structure_and_results():
    a = delayed(inc)(1)
    b = delayed(lambda_free_add)(a, [a, {"k": a}], z=a)
    restored = pickle.loads(pickle.dumps(b))
    assert isinstance(restored, Delayed)
    assert restored.key == b.key
    assert set(restored.dask) == set(b.dask)
    assert restored.compute() == b.compute()


def lambda_free_add(x, items, z):
    return x + items[0] + items[1]["k"] + z


def test_module_level_functions_pickle_by_reference():
    payload = pickle.dumps(delayed(inc)(1))
    assert b"inc" in payload and len(payload) < 600


def test_cloudpickle_carries_local_functions():
    cloudpickle = pytest.importorskip("cloudpickle")

    def local(x):
        return x * 10

    d = delayed(local)(delayed(inc)(1))
    assert pickle.loads(cloudpickle.dumps(d)).compute() == 20


def test_roles_survive_pickling():
    f = pickle.loads(pickle.dumps(delayed(inc, pure=True, nout=None)))
    assert f(1).compute() == 2
    assert f(1).key == f(1).key
    method = pickle.loads(pickle.dumps(delayed("abc").upper))
    assert method().compute() == "ABC"
    pair = pickle.loads(pickle.dumps(delayed(divmod, nout=2)(7, 2)))
    assert [p.compute() for p in pair] == [3, 1]


def test_long_chain_pickles_without_recursion():
    x = delayed(0)
    for _ in range(50_000):
        x = delayed(inc)(x)
    assert pickle.loads(pickle.dumps(x)).compute(scheduler="sync") == 50_000


def test_corrupt_pickle_data_is_a_clear_error():
    from belated._belated import rebuild

    with pytest.raises(ValueError, match="cannot unpickle a Delayed"):
        rebuild([("k", (9, None), [])], [0], None, None)
    with pytest.raises(ValueError, match="refers to a later task"):
        rebuild([("k", (0, (1, 5)), [])], [0], None, None)
    with pytest.raises(ValueError, match="refers to a later task"):
        rebuild([("k", (0, (0, 1)), [3])], [0], None, None)


@pytest.mark.parametrize(
    "tasks, role",
    [
        # A method call with no object to call it on.
        ([("k", (2, "upper", [], []), [])], None),
        ([("k", (2, "upper"), [])], None),
        # A delayed function whose task is a call, or a value that cannot be called.
        ([("k", (1, (0, len), [(0, "abc")], []), [])], ("function", None, None)),
        ([("k", (0, (0, 5)), [])], ("function", None, None)),
        # An attribute with no object, a key that cannot be one, a task that is not a tuple.
        ([("k", (0, (0, 5)), [])], ("attribute", "real")),
        ([([1], (0, (0, 5)), [])], None),
        ([7], None),
    ],
)
def test_crafted_pickle_states_are_refused_with_a_value_error(tasks, role):
    from belated._belated import rebuild

    with pytest.raises(ValueError, match="cannot unpickle a Delayed"):
        rebuild(tasks, [0], None, role)
