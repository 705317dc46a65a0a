"""The Python side of one ``BATCH`` of trivial calls, in one process, for per-call cost without worker
processes: the parent's ``dumps_call`` of each call (``encode``), then a worker's handling of the
whole batch (``handle``: unpickling, running, encoding each reply), with ``belated._worker`` loaded as
a worker loads it (the ``belated`` package not imported).

callgrind cannot run the parent of a process cluster (valgrind lacks ``pidfd_open``) and wall times
taken while other work shares the cores prove nothing, so this runs under callgrind for A/B: the
difference between two sizes is the per-call count, free of the interpreter's start::

    valgrind --tool=callgrind --callgrind-out-file=/dev/null python benchmarks/worker_batch.py handle 1000
    valgrind --tool=callgrind --callgrind-out-file=/dev/null python benchmarks/worker_batch.py handle 3000

``python benchmarks/worker_batch.py PART CALLS [--time] [--worker FILE]``: PART is ``encode`` or
``handle`` (which includes the encoding); ``--time`` prints each part's wall time per call (best of 7);
``--worker`` loads another ``_worker.py`` (an old build's, say).
"""

import argparse
import socket
import struct
import sys
import timeit
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path


def load_worker(path):
    """``belated._worker`` from ``path``, as the worker bootstrap loads it."""
    spec = spec_from_file_location("belated._worker", path)
    worker = sys.modules["belated._worker"] = module_from_spec(spec)
    spec.loader.exec_module(worker)
    return worker


def inc(x):
    return x + 1


def batch(worker, calls):
    """A ``BATCH`` request's frames: ``calls`` calls of ``inc`` (defined here, so sent by value as a
    script's functions are), each result sent back."""
    encoded = [worker.dumps_call(inc, (i,), None) for i in range(calls)]
    # Since batches overrun, a batch's header gives its overrun in µs (this one never overruns).
    header = [worker.BATCH, 0, *([10**9] if overruns(worker) else []), calls]
    frames = [b""]
    # As the parent sends them: the function's pickle once, for the calls in a row that share it.
    same = getattr(worker, "SAME_FUNCTION", None)
    for i, call in enumerate(encoded):
        if same is not None and i > 0:
            header += [i + 1, worker.SEND | same, len(call) - 1]
            frames += call[1:]
        else:
            header += [i + 1, worker.SEND, len(call)]
            frames += call
    frames[0] = struct.pack(f"<{len(header)}Q", *header)
    return frames


def overruns(worker):
    """Whether ``worker`` (this tree's or an old build's) watches its batches for overruns."""
    return hasattr(worker, "_Watcher")


def handler(worker):
    """Runs a batch's frames as the worker does, returning its last reply."""
    if not overruns(worker):
        return worker._handle_batch
    _, theirs = socket.socketpair()
    watcher = worker._Watcher(worker.Channel(theirs))
    return lambda frames: worker._handle_batch(frames, watcher)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["encode", "handle"])
    parser.add_argument("calls", type=int)
    parser.add_argument("--time", action="store_true")
    parser.add_argument("--worker", default=Path(__file__).parent.parent / "python/belated/_worker.py")
    options = parser.parse_args()
    part, calls = options.part, options.calls
    worker = load_worker(options.worker)
    worker.new_computation()
    frames = batch(worker, calls)
    handle = handler(worker)
    if part == "handle":
        replies = handle(frames)
        assert len(replies) == calls + 1
        assert tuple(worker.loads_reply([replies[-1]])) == (True, calls)
    # A worker never imports the package for trivial calls; a change that made it would cost ~0.1 s.
    assert "belated" not in sys.modules
    if not options.time:
        return
    runs = {"encode": lambda: batch(worker, calls), "handle": lambda: handle(frames)}
    for name in ("encode", "handle") if part == "handle" else ("encode",):
        best = min(timeit.repeat(runs[name], number=1, repeat=7))
        print(f"{name}: {best / calls * 1e6:.2f} µs/call")


if __name__ == "__main__":
    main()
