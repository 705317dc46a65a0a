"""The API reference's functions and classes document their parameters in numpydoc sections that
match their signatures, and the examples in docstrings of the compiled module run (pytest's
--doctest-modules reads only the package's .py files)."""

import doctest
import inspect
import re
from pathlib import Path

import pytest

import belated

API_PAGE = Path(__file__).parent.parent / "docs" / "api.md"
# Accepted for dask compatibility and ignored; each docstring says so in its text.
IGNORED = {"optimize_graph", "kwargs"}


def documented_callables():
    names = re.findall(r"^::: belated\.(\w+)$", API_PAGE.read_text(), re.MULTILINE)
    objects = [getattr(belated, name) for name in names]
    # Classes a user doesn't construct (Delayed, Future, Picture, Dashboard, errors) have no parameters
    # to document.
    return [obj for obj in objects if inspect.isroutine(obj) or obj is belated.Client]


def section(doc, title):
    """The entries of a numpydoc section: the names before ' : ' at the section's indentation."""
    match = re.search(rf"^( *){title}\n\1-{{{len(title)}}}\n(.*?)(?:\n\1\w+\n\1-+\n|\Z)", doc, re.S | re.M)
    if match is None:
        return None
    indent = match.group(1)
    return [
        line.strip().split(" : ")[0].lstrip("*")
        for line in match.group(2).splitlines()
        if line.startswith(indent) and line[len(indent) : len(indent) + 1] not in (" ", "")
    ]


@pytest.mark.parametrize("obj", documented_callables(), ids=lambda obj: obj.__name__)
def test_parameters_returns_and_raises_are_documented_as_the_signature_has_them(obj):
    doc = inspect.getdoc(obj)
    assert doc, f"{obj.__name__} has no docstring"
    documented = section(doc, "Parameters")
    assert documented is not None, f"{obj.__name__} has no Parameters section"
    target = obj.__init__ if inspect.isclass(obj) else obj
    parameters = set(inspect.signature(target).parameters) - {"self"}
    assert set(documented) - parameters == set(), "documented but not taken"
    assert parameters - set(documented) - IGNORED == set(), "taken but not documented"
    assert section(doc, "Raises"), f"{obj.__name__} has no Raises section"
    if not inspect.isclass(obj):
        assert section(doc, "Returns"), f"{obj.__name__} has no Returns section"


def test_the_section_reader_sees_a_missing_parameter():
    def f(a, b):
        """Adds.

        Parameters
        ----------
        a : int
            One.

        Returns
        -------
        int
            The sum.
        """

    assert section(inspect.getdoc(f), "Parameters") == ["a"]
    assert section(inspect.getdoc(f), "Raises") is None


@pytest.mark.parametrize("name", ["delayed"])
def test_the_compiled_module_docstring_examples_run(name):
    obj = getattr(belated, name)
    test = doctest.DocTestParser().get_doctest(obj.__doc__, {}, name, None, 0)
    assert test.examples, "the docstring has examples"
    runner = doctest.DocTestRunner()
    runner.run(test)
    assert runner.failures == 0
