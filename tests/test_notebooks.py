"""In IPython and Jupyter: what a failing compute's traceback shows, run through IPython's own
traceback machinery (an in-process shell; no kernel, no Jupyter)."""

import re

import pytest

IPython = pytest.importorskip("IPython")

CELL = """
import belated

def f(x):
    return 1 / x
"""


@pytest.fixture
def shell():
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.enabled = False
    shell = InteractiveShell.instance(config=config)
    shell.run_cell(CELL)
    yield shell
    InteractiveShell.clear_instance()


def traceback_of(shell, capsys, code):
    capsys.readouterr()
    result = shell.run_cell(code)
    assert isinstance(result.error_in_exec, ZeroDivisionError)
    return re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out)


@pytest.mark.parametrize(
    "call", ["belated.compute(belated.delayed(f)(0))", "belated.delayed(f)(0).compute()"]
)
def test_a_task_error_shows_the_users_frames_not_belateds(shell, capsys, call):
    shown = traceback_of(shell, capsys, call)
    assert "return 1 / x" in shown and call in shown
    assert "_api.py" not in shown and "skipping hidden" in shown
    assert "Compute several lazy values" not in shown


def test_a_worker_traceback_shows_the_source_of_a_function_defined_in_the_notebook(shell, capsys):
    shown = traceback_of(shell, capsys, 'belated.delayed(f)(0).compute(scheduler="processes", num_workers=1)')
    # The task's frame is rebuilt here, so IPython shows the cell's line as for a task on a thread, and
    # hides belated's frames, which are no longer the last.
    assert "return 1 / x" in shown and "skipping hidden" in shown
    assert "<dynamic-code>" not in shown and "_worker.py" not in shown and "_api.py" not in shown
    assert "traceback in the worker process" not in shown, "the frames are not repeated as a note"
    assert "Compute several lazy values" not in shown
