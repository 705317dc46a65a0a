"""More hostile but ordinary tasks, on every scheduler, each compared with dask and eager Python where
they can answer: callables whose state hides where a token might not look, and tasks that misuse the
process they run in."""

import dask
import pytest

import belated

LIBRARIES = pytest.mark.parametrize("lib", [dask, belated], ids=["dask", "belated"])


def reads_its_own_attribute(k):
    def add(x):
        return x + add.k

    add.k = k
    return add


@LIBRARIES
def test_pure_calls_of_functions_told_apart_only_by_their_attributes_are_not_merged(lib):
    first, second = reads_its_own_attribute(1), reads_its_own_attribute(2)
    a, b = lib.delayed(first, pure=True)(10), lib.delayed(second, pure=True)(10)
    assert a.key != b.key
    assert lib.compute(a, b, scheduler="sync") == (first(10), second(10)) == (11, 12)
    same = reads_its_own_attribute(1)
    assert lib.delayed(same, pure=True)(10).key == lib.delayed(reads_its_own_attribute(1), pure=True)(10).key
