"""What a user does first, run by tests/test_wheel.py in a fresh venv holding only the built wheel.

The tutorial's example 1 on the default threads, on worker processes and on a local cluster, its
``visualize()`` to a PNG, and a failing task, whose exception must arrive as itself and carry the note
naming its task (on 3.10, which has no ``add_note``, in ``__notes__``), and ``__version__`` the
wheel's. Prints one line per check; any failure exits non-zero.

    python tests/wheel_smoke.py OUTPUT_DIR
"""

import importlib.metadata
import os
import sys
import time

import belated as dask
from belated import delayed


def square(x):
    time.sleep(0.01)
    return x * x


def fail(x):
    raise ValueError(f"bad input {x}")


def main(out_dir):
    res = delayed(square)(3) + delayed(square)(4)
    assert res.compute() == 25
    print("threads: 25")
    assert res.compute(scheduler="processes") == 25
    print("processes: 25")
    with dask.Client(n_workers=1, threads_per_worker=2, dashboard_address=None):
        assert res.compute() == 25
    print("local cluster: 25")

    png = os.path.join(out_dir, "example1.png")
    res.visualize(filename=png)
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n", "visualize() did not write a PNG"
    print(f"visualize: {os.path.getsize(png)} bytes of PNG")

    bad = delayed(fail)(1)
    try:
        dask.compute(bad)
    except ValueError as error:
        notes = getattr(error, "__notes__", [])
        assert f"raised by belated task {bad.key}" in notes, notes
    else:
        raise AssertionError("the failing task did not raise")
    print("task note: present")
    installed = importlib.metadata.version("belated")
    assert dask.__version__ == installed, f"__version__ {dask.__version__}, the wheel's {installed}"
    print(f"belated {dask.__version__} on Python {sys.version.split()[0]}: ok")


if __name__ == "__main__":
    main(sys.argv[1])
