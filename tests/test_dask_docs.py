"""dask's own delayed documentation, run on dask and on belated, with the values compared.

The code blocks below are copied from dask's documentation (https://github.com/dask/dask,
``docs/source/delayed.rst``, ``delayed-best-practices.rst`` and ``delayed-collections.rst`` at commit
of 2026-08-17; BSD-3-Clause, Copyright (c) Anaconda, Inc. and contributors). Every code block of those
pages is here. Where a block leaves names undefined (``f``, ``L``, ``filenames``...) ``setup`` defines
them; where it cannot run as printed (a placeholder path, ten million tasks, a broken indentation)
``adapt`` lists the exact replacements made. The ``dask.delayed`` docstring is read from the installed
dask and run as a doctest on both libraries.

Each block runs twice in a fresh namespace: with ``dask`` bound to dask, and with its dask imports
rewritten to belated (``import belated as dask``). The values of its expression statements and of the
names in ``compare`` are then computed (a lazy value by its own library) and must be equal.
"""

import ast
import doctest
import importlib.util
import re
import sys
import types

import dask
import pytest

import belated

Example = dict

EXAMPLES = {
    # --- delayed.rst ---------------------------------------------------------------------------------
    "delayed.rst: intro": Example(
        setup="def inc(x):\n    return x + 1\n\ndef add(x, y):\n    return x + y\n",
        code="""
x = dask.delayed(inc)(1)
y = dask.delayed(inc)(2)
z = dask.delayed(add)(x, y)
z.compute()
z.visualize()
""",
        compare=["z"],
    ),
    "delayed.rst: example": Example(
        code="""
def inc(x):
    return x + 1

def double(x):
    return x * 2

def add(x, y):
    return x + y

data = [1, 2, 3, 4, 5]

output = []
for x in data:
    a = inc(x)
    b = double(x)
    c = add(a, b)
    output.append(c)

total = sum(output)
""",
        compare=["total"],
    ),
    "delayed.rst: wrapped in delayed": Example(
        setup=(
            "def inc(x):\n    return x + 1\n\ndef double(x):\n    return x * 2\n\n"
            "def add(x, y):\n    return x + y\n\ndata = [1, 2, 3, 4, 5]\n"
        ),
        code="""
import dask

output = []
for x in data:
    a = dask.delayed(inc)(x)
    b = dask.delayed(double)(x)
    c = dask.delayed(add)(a, b)
    output.append(c)

total = dask.delayed(sum)(output)

total.visualize()  # see image to the right

total.compute()
""",
        compare=["total", "output"],
    ),
    "delayed.rst: decorator": Example(
        code="""
import dask

@dask.delayed
def inc(x):
    return x + 1

@dask.delayed
def double(x):
    return x * 2

@dask.delayed
def add(x, y):
    return x + y

data = [1, 2, 3, 4, 5]

output = []
for x in data:
    a = inc(x)
    b = double(x)
    c = add(a, b)
    output.append(c)

total = dask.delayed(sum)(output)
""",
        compare=["total"],
    ),
    "delayed.rst: indirect dependencies": Example(
        code="""
import dask
from dask.graph_manipulation import bind

DATA = []

@dask.delayed
def inc(x):
    return x + 1

@dask.delayed
def add_data(x):
    DATA.append(x)

@dask.delayed
def sum_data(x):
    return sum(DATA) + x

a = inc(1)
b = add_data(a)
c = inc(3)
d = add_data(c)
e = inc(5)
f = bind(sum_data, [b, d])(e)
f.compute()
""",
        # The two appends are independent, so their order is not fixed.
        then="appended = sorted(DATA)\n",
        compare=["appended"],
    ),
    # --- delayed-best-practices.rst ------------------------------------------------------------------
    "best practices: call delayed on the function, don't": Example(
        setup="import dask\ndef f(x, y):\n    return x * 10 + y\nx, y = 1, 2\n",
        code="""
# This executes immediately

dask.delayed(f(x, y))
""",
    ),
    "best practices: call delayed on the function, do": Example(
        setup="import dask\ndef f(x, y):\n    return x * 10 + y\nx, y = 1, 2\n",
        code="""
# This makes a delayed function, acting lazily

dask.delayed(f)(x, y)
""",
    ),
    "best practices: compute at once, don't": Example(
        setup="import dask\ndef f(x):\n    return x * 2\nL = [1, 2, 3]\n",
        code="""
# Avoid calling compute repeatedly

results = []
for x in L:
    y = dask.delayed(f)(x)
    results.append(y.compute())

results
""",
    ),
    "best practices: compute at once, do": Example(
        setup="import dask\ndef f(x):\n    return x * 2\nL = [1, 2, 3]\n",
        code="""
# Collect many calls for one compute

results = []
for x in L:
    y = dask.delayed(f)(x)
    results.append(y)

results = dask.compute(*results)
""",
        compare=["results"],
    ),
    "best practices: don't mutate inputs, don't": Example(
        setup="import dask\n",
        code="""
# Mutate inputs in functions

@dask.delayed
def f(x):
    x += 1
    return x
""",
        then="out = f(1)\n",
        compare=["out"],
    ),
    "best practices: don't mutate inputs, do": Example(
        setup="import dask\n",
        code="""
# Return new values or copies

@dask.delayed
def f(x):
    x = x + 1
    return x
""",
        then="out = f(1)\n",
        compare=["out"],
    ),
    "best practices: copy before mutating": Example(
        setup="import dask\nfrom copy import copy\n",
        code="""
@dask.delayed
def f(x):
    x = copy(x)
    x += 1
    return x
""",
        then="x = 5\nout = f(x)\nout.compute()\n",
        compare=["out", "x"],
    ),
    "best practices: avoid global state": Example(
        setup="import dask\n",
        code="""
L = []

# This references global variable L

@dask.delayed
def f(x):
    L.append(x)
""",
        then="dask.compute(f(1), scheduler='sync')\n",
        compare=["L"],
    ),
    "best practices: side effects, don't": Example(
        setup="import dask\ndef f(*args):\n    return sum(args)\n",
        code="""
# Forget to call compute

dask.delayed(f)(1, 2, 3)

...
""",
    ),
    "best practices: side effects, do": Example(
        setup="import dask\ndef f(*args):\n    return sum(args)\n",
        code="""
# Ensure delayed tasks are computed

x = dask.delayed(f)(1, 2, 3)
...
dask.compute(x, ...)
""",
    ),
    "best practices: many pieces, don't": Example(
        setup="import dask\nfilenames = ['a.csv', 'b.csv']\n",
        code="""
# One giant task


def load(filename):
    ...


def process(data):
    ...


def save(data):
    ...

@dask.delayed
def f(filenames):
    results = []
    for filename in filenames:
        data = load(filename)
        data = process(data)
        result = save(data)
        results.append(result)

    return results

dask.compute(f(filenames))
""",
    ),
    "best practices: many pieces, do": Example(
        setup="import dask\nfilenames = ['a.csv', 'b.csv']\n",
        code="""
# Break up into many tasks

@dask.delayed
def load(filename):
    ...

@dask.delayed
def process(data):
    ...

@dask.delayed
def save(data):
    ...

def f(filenames):
    results = []
    for filename in filenames:
        data = load(filename)
        data = process(data)
        result = save(data)
        results.append(result)

    return results

dask.compute(f(filenames))
""",
    ),
    "best practices: too many tasks, don't": Example(
        setup="import dask\ndef f(x):\n    return x + 1\n",
        adapt=[("range(10000000)", "range(1000)")],
        code="""
# Too many tasks

results = []
for x in range(10000000):
    y = dask.delayed(f)(x)
    results.append(y)
""",
        compare=["results"],
    ),
    "best practices: too many tasks, do": Example(
        setup="import dask\ndef f(x):\n    return x + 1\n",
        adapt=[("range(10000000), npartitions=1000", "range(1000), npartitions=10")],
        code="""
# Use collections

import dask.bag as db
b = db.from_sequence(range(10000000), npartitions=1000)
b = b.map(f)
...
""",
        compare=["b"],
    ),
    "best practices: batches": Example(
        setup="import dask\ndef f(x):\n    return x + 1\n",
        # As printed, the block's second half is indented one space more than its first: it cannot parse.
        adapt=[
            ("\n batches = []", "\nbatches = []"),
            ("\n for i in range(0, 10000000, 10000):", "\nfor i in range(0, 30000, 10000):"),
            ("\n     result_batch", "\n    result_batch"),
            ("\n     batches.append", "\n    batches.append"),
        ],
        code="""
def batch(seq):
    sub_results = []
    for x in seq:
        sub_results.append(f(x))
    return sub_results

 batches = []
 for i in range(0, 10000000, 10000):
     result_batch = dask.delayed(batch)(range(i, i + 10000))
     batches.append(result_batch)
""",
        compare=["batches"],
    ),
    "best practices: delayed within delayed, don't": Example(
        setup="import dask\ndef f(x):\n    return x * 3\n",
        code="""
# Delayed function calls delayed

@dask.delayed
def process_all(L):
    result = []
    for x in L:
        y = dask.delayed(f)(x)
        result.append(y)
    return result
""",
        then="out = process_all([1, 2])\n",
        compare=["out"],
    ),
    "best practices: delayed within delayed, do": Example(
        setup="import dask\ndef f(x):\n    return x * 3\n",
        code="""
# Normal function calls delayed


def process_all(L):
    result = []
    for x in L:
        y = dask.delayed(f)(x)
        result.append(y)
    return result
""",
        then="out = process_all([1, 2])\n",
        compare=["out"],
    ),
    "best practices: dask collections, don't": Example(
        setup="import dask\ndef train(df, y=None):\n    return (len(df), y)\n",
        adapt=[("'/path/to/*.csv'", "CSV_FILES")],
        code="""
# Call delayed functions on Dask collections

import dask.dataframe as dd
df = dd.read_csv('/path/to/*.csv')

dask.delayed(train)(df)
""",
        needs="pyarrow",
    ),
    "best practices: dask collections, do": Example(
        setup="import dask\ndef train(df, y=None):\n    return (len(df), y)\n",
        adapt=[("'/path/to/*.csv'", "CSV_FILES")],
        code="""
# Use mapping methods if applicable

import dask.dataframe as dd
df = dd.read_csv('/path/to/*.csv')

df.map_partitions(train)
""",
        needs="pyarrow",
    ),
    "best practices: to_delayed": Example(
        setup=(
            "import dask\nimport dask.dataframe as dd\ndef train(df, y=None):\n    return (len(df), y)\n"
            "df = dd.read_csv(CSV_FILES)\n"
        ),
        code="""
partitions = df.to_delayed()
delayed_values = [dask.delayed(train)(part)
                  for part in partitions]
""",
        compare=["delayed_values"],
        needs="pyarrow",
    ),
    "best practices: single chunk": Example(
        setup=(
            "import dask\nimport dask.dataframe as dd\ndef train(df, y=None):\n    return (len(df), y)\n"
            "df = dd.read_csv(CSV_FILES)\n"
        ),
        adapt=[("train)(...,", "train)([1, 2],")],
        code="""
dask.delayed(train)(..., y=df.sum())
""",
        # dask itself fails here (dask-expr cannot list the keys of this reduction); the reference is
        # then dask with the reduction computed first.
        dask_raises=NotImplementedError,
        reference_adapt=[("y=df.sum()", "y=df.sum().compute()")],
        needs="pyarrow",
    ),
    "best practices: large inputs, don't": Example(
        setup="import dask\nimport numpy as np\ndef train(x, i):\n    return x.sum() + i\n",
        adapt=[("np.array(...)", "np.array([1, 2, 3])"), ("range(1000)", "range(10)")],
        code="""
x = np.array(...)  # some large array

results = [dask.delayed(train)(x, i)
           for i in range(1000)]
""",
        compare=["results"],
    ),
    "best practices: large inputs, do": Example(
        setup="import dask\nimport numpy as np\ndef train(x, i):\n    return x.sum() + i\n",
        adapt=[("np.array(...)", "np.array([1, 2, 3])"), ("range(1000)", "range(10)")],
        code="""
x = np.array(...)    # some large array
x = dask.delayed(x)  # delay the data once
results = [dask.delayed(train)(x, i)
           for i in range(1000)]
""",
        compare=["results"],
    ),
    # --- delayed-collections.rst ---------------------------------------------------------------------
    "delayed-collections.rst": Example(
        adapt=[
            ("filenames = ...", "filenames = CSV_FILES_LIST"),
            ("df = ... # do work with dask.dataframe", "df = df[df.x > 1]"),
        ],
        code="""
import dask.dataframe as dd
from dask.delayed import delayed

from my_custom_library import load, save

filenames = ...
dfs = [delayed(load)(fn) for fn in filenames]

df = dd.from_delayed(dfs)
df = ... # do work with dask.dataframe

dfs = df.to_delayed()
writes = [delayed(save)(df, fn) for df, fn in zip(dfs, filenames)]

dd.compute(*writes)
""",
        compare=["writes"],
        needs="pyarrow",
    ),
}

HAVE_GRAPHVIZ = importlib.util.find_spec("graphviz") is not None
PICTURE = "a picture"

IMPORT_REWRITES = [
    (r"^(\s*)import dask$", r"\1import belated as dask"),
    (r"^(\s*)from dask\.(delayed|base) import", r"\1from belated import"),
    (r"^(\s*)from dask\.graph_manipulation import", r"\1from belated.graph_manipulation import"),
    (r"^(\s*)from dask import", r"\1from belated import"),
]


def for_belated(code):
    for pattern, replacement in IMPORT_REWRITES:
        code = re.sub(pattern, replacement, code, flags=re.MULTILINE)
    return code


class Recorder(ast.NodeTransformer):
    """Turns each top-level expression statement into ``_values.append(<expression>)``."""

    def visit_Module(self, node):
        body = []
        for statement in node.body:
            if isinstance(statement, ast.Expr):
                append = ast.parse("_values.append(None)").body[0]
                append.value.args = [statement.value]
                statement = ast.copy_location(append, statement)
            body.append(statement)
        node.body = body
        return ast.fix_missing_locations(node)


def run(example, lib, tmp_path, reference=False):
    code = example["code"]
    for old, new in example.get("adapt", []) + (example.get("reference_adapt", []) if reference else []):
        assert old in code, f"the adaptation {old!r} no longer matches the documentation"
        code = code.replace(old, new)
    code = example.get("setup", "") + code + example.get("then", "")
    if lib is belated:
        code = for_belated(code)
    if lib is dask and not HAVE_GRAPHVIZ:
        code = "\n".join(line for line in code.splitlines() if ".visualize(" not in line)
    namespace = {
        "dask": lib,
        "_values": [],
        "CSV_FILES": str(tmp_path / "*.csv"),
        "CSV_FILES_LIST": sorted(str(p) for p in tmp_path.glob("*.csv")),
        "__name__": "dask_docs_example",
    }
    exec(compile(Recorder().visit(ast.parse(code)), "<dask docs>", "exec"), namespace)
    values = list(namespace["_values"]) + [namespace[name] for name in example.get("compare", [])]
    return [resolve(value) for value in values]


def resolve(value):
    """A value with lazy parts computed by their own library; pictures stand for themselves."""
    if isinstance(value, belated.Delayed):
        return resolve(value.compute(scheduler="sync"))
    if dask.is_dask_collection(value):
        return resolve(dask.compute(value, scheduler="sync")[0])
    if isinstance(value, belated.Picture) or type(value).__module__.startswith(("IPython", "graphviz")):
        return PICTURE
    if type(value) in (list, tuple):
        return type(value)(resolve(item) for item in value)
    if type(value).__module__.startswith("pandas"):
        return value.to_dict()
    if type(value).__module__.startswith("numpy"):
        return value.tolist()
    return value


@pytest.fixture
def docs_dir(tmp_path, monkeypatch):
    """A working directory with the CSV files and the ``my_custom_library`` the examples read."""
    monkeypatch.chdir(tmp_path)
    if importlib.util.find_spec("pandas") is not None:
        import pandas as pd

        for i in range(3):
            pd.DataFrame({"x": [i, i + 1, i + 2], "y": [1.0, 2.0, 3.0]}).to_csv(
                tmp_path / f"{i}.csv", index=False
            )
    library = types.ModuleType("my_custom_library")
    source = "import pandas as pd\ndef load(fn):\n    return pd.read_csv(fn)\n"
    source += "def save(df, fn):\n    return (fn[-5:], len(df))\n"
    exec(source, library.__dict__)
    monkeypatch.setitem(sys.modules, "my_custom_library", library)
    return tmp_path


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_dask_docs_example_gives_the_same_values(name, docs_dir):
    example = EXAMPLES[name]
    if "needs" in example:
        pytest.importorskip(example["needs"])
    if "dask_raises" in example:
        with pytest.raises(example["dask_raises"]):
            run(example, dask, docs_dir)
    theirs = run(example, dask, docs_dir, reference="dask_raises" in example)
    ours = run(example, belated, docs_dir)
    if not HAVE_GRAPHVIZ:  # dask cannot draw without graphviz, so its .visualize() lines were left out
        assert ours.count(PICTURE) == example["code"].count(".visualize(")
        ours = [value for value in ours if value != PICTURE]
    assert ours == theirs


@pytest.mark.parametrize("lib", [dask, belated], ids=["dask", "belated"])
def test_the_dask_delayed_docstring_runs(lib):
    text = dask.delayed.__doc__
    assert ">>>" in text
    if lib is belated:
        text = re.sub(
            r">>> (import dask|from dask(?:\.\w+)? import)", lambda m: ">>> " + for_belated(m[1]), text
        )
    globs = {"Delayed": belated.Delayed if lib is belated else sys.modules["dask.delayed"].Delayed}
    test = doctest.DocTestParser().get_doctest(text, globs, f"{lib.__name__}.delayed", None, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    assert runner.failures == 0 and runner.tries > 30
