"""The crates' shape, as the README's "How it works" draws it: each crate's modules depend on each other
one way (no import cycle), and the engine and the worker runtime build without Python."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

CRATES = Path(__file__).resolve().parent.parent / "crates"
LINE_COMMENT = re.compile(r"//.*$", re.M)
BLOCK_COMMENT = re.compile(r"/\*.*?\*/", re.S)
# `crate::name` or `crate::{name::…, other}`: the first segment of each path is the module used.
CRATE_PATH = re.compile(r"\bcrate::(\w+|\{)")


def used_modules(source, modules):
    code = LINE_COMMENT.sub("", BLOCK_COMMENT.sub("", source))
    used = set()
    for hit in CRATE_PATH.finditer(code):
        if hit.group(1) != "{":
            used.add(hit.group(1))
            continue
        depth, end = 1, hit.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(code[end], 0)
            end += 1
        for item in code[hit.end() : end - 1].split(","):
            first = re.match(r"\s*(\w+)", item)
            if first:
                used.add(first.group(1))
    return used & modules


def module_graph(crate):
    sources = {path.stem: path.read_text() for path in (crate / "src").glob("*.rs")}
    modules = set(sources)
    return {name: used_modules(text, modules) - {name} for name, text in sources.items()}


def cycles(graph):
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_module_reader_finds_a_cycle_and_ignores_comments():
    modules = {"a", "b", "c"}
    source = "use crate::{b::X, c};\n// crate::a\n/* crate::a */ fn f() { crate::b::g() }"
    assert used_modules(source, modules) == {"b", "c"}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("crate", sorted(path.name for path in CRATES.iterdir() if (path / "src").is_dir()))
def test_a_crates_modules_have_no_import_cycle(crate):
    graph = module_graph(CRATES / crate)
    assert len(graph) > 1, "the reader found the crate's modules"
    assert cycles(graph) == []


@pytest.mark.skipif(shutil.which("cargo") is None, reason="needs cargo")
@pytest.mark.parametrize("crate", ["belated-core", "belated-cluster", "belated"])
def test_the_engine_the_worker_runtime_and_the_rust_api_build_without_python(crate):
    tree = subprocess.run(
        ["cargo", "tree", "--quiet", "--offline", "-p", crate, "-e", "normal,build", "--prefix", "none"],
        cwd=CRATES.parent,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    assert tree.startswith(crate + " ")
    assert not [line for line in tree.splitlines() if re.match(r"pyo3|belated-py", line)]
