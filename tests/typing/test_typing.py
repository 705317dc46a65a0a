"""belated's types: what mypy infers for user code (delayed_types.py), and the runtime side of them."""

import inspect
import pathlib
import pickle
import pydoc

import pytest

from belated import Delayed, delayed

CHECKED = pathlib.Path(__file__).with_name("delayed_types.py")


# The check cannot pass whatever the types: beside delayed_types.py, mypy checks a file with a false
# assert_type and an ignore that silences nothing, and must report both (one run: mypy is slow to start).
WRONG = """\
from typing import assert_type
from belated import Delayed, delayed
@delayed
def f(x: int) -> str:
    return str(x)
assert_type(f(1), Delayed[int])
f(1)  # type: ignore[call-overload]
"""


def test_mypy_infers_the_types_and_reports_the_errors_of_delayed_types_py(tmp_path):
    api = pytest.importorskip("mypy.api")
    wrong = tmp_path / "wrong.py"
    wrong.write_text(WRONG)
    out, err, status = api.run(
        ["--strict", "--no-error-summary", "--cache-dir", str(tmp_path / "cache"), str(CHECKED), str(wrong)]
    )
    assert status == 1, err
    lines = out.splitlines()
    assert [line for line in lines if not line.startswith(str(wrong))] == []
    assert [line.rsplit("[", 1)[-1] for line in lines if ": error:" in line] == [
        "assert-type]",
        "unused-ignore]",
    ]


def test_delayed_is_subscriptable_at_runtime():
    alias = Delayed[int]
    assert alias.__origin__ is Delayed and alias.__args__ == (int,)
    assert isinstance(delayed(1), Delayed)


def documented(x):
    """Documented."""
    return x


class Holder:
    def method(self):
        return 1


def test_a_delayed_function_forwards_its_name_qualname_module_and_doc():
    wrapped = delayed(documented)
    assert (wrapped.__name__, wrapped.__qualname__) == ("documented", "documented")
    assert wrapped.__module__ == documented.__module__ != "belated"
    assert wrapped.__doc__ == "Documented."
    method = delayed(Holder.method)
    assert method.__qualname__ == "Holder.method"
    # A delayed value that is not a function has the class's.
    value = delayed(1)
    assert value.__module__ == "belated"
    assert value.__doc__ == Delayed.__doc__
    with pytest.raises(AttributeError):
        value.__qualname__  # noqa: B018


def test_the_class_keeps_its_own_module_and_docstring():
    assert Delayed.__module__ == "belated" and Delayed.__qualname__ == "Delayed"
    assert repr(Delayed) == "<class 'belated.Delayed'>"
    assert pickle.loads(pickle.dumps(Delayed)) is Delayed
    assert inspect.getdoc(Delayed).startswith("A lazy value: the result of a task")
    page = pydoc.render_doc(Delayed, renderer=pydoc.plaintext)
    assert "A lazy value: the result of a task" in page and "compute" in page
