"""A worker process of the ``processes`` scheduler (``python -m belated._worker``) or of a local cluster
(``python -m belated._worker --listen PATH [MODULES]``, importing the comma-separated MODULES once it
listens).

Each message is a frame count, then frames (length-prefixed bytes); a pickle travels as its frames:
the pickle, then its out-of-band buffers (pickle protocol 5), so large arrays are not copied into the
pickle stream. Replies are ``(True, result)`` or ``(False, exception, formatted traceback)``.

For the processes scheduler, calls ``(function, args, kwargs)`` come on standard input and replies go
to standard output: pipes private to the parent, no port.

For a cluster, the worker keeps results in its store, under ids the parent chose, and serves each
connection to a unix socket (in a directory only the user can enter) on its own thread: one per
scheduler thread of its group, and one for fetching results. A request starts with a header frame of
little-endian u64: ``[op, n, *ids to release, ...]``, then:

- ``RUN``: ``[result id, flags, n blocks, (n ids, *ids, n frames) per block]``, then each block's frames
  (another worker's reply to a ``FETCH``, whose values are stored under those ids), then the call's
  frames. Arguments that are stored results arrive as :class:`Stored` and unpickle as the value.
  ``flags``: ``KEEP`` stores the result, ``SEND`` returns it (else the reply carries the size in bytes
  of what was kept, for placing the tasks that need it).
- ``FETCH``: ``[n, *ids]``; the reply carries the list of those values.

Either way the process ends when its parent dies or closes its standard input.
"""

import importlib
import itertools
import os
import pickle
import signal
import socket
import struct
import sys
import threading
import traceback
import types

import cloudpickle

_LENGTH = struct.Struct("<Q")


def read_message(stream):
    """The frames of one message, or None at the end of the stream."""
    header = stream.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        return None
    (count,) = _LENGTH.unpack(header)
    frames = []
    for _ in range(count):
        (length,) = _LENGTH.unpack(stream.read(_LENGTH.size))
        frames.append(stream.read(length))
    return frames


def write_message(stream, frames):
    stream.write(_LENGTH.pack(len(frames)))
    for frame in frames:
        view = memoryview(frame).cast("B")
        stream.write(_LENGTH.pack(view.nbytes))
        stream.write(view)
    stream.flush()


def dumps(obj):
    """``obj`` as frames: a protocol-5 pickle and its out-of-band buffers. cloudpickle, so functions
    and classes defined in ``__main__`` or interactively travel by value."""
    buffers = []
    head = cloudpickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    return [head, *(buffer.raw() for buffer in buffers)]


def dumps_reply(obj):
    """:func:`dumps` for what a worker sends back. The plain pickler is several times faster, and
    what it can find by reference here the parent and other workers (same ``sys.path``) can too."""
    buffers = []
    try:
        head = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    except Exception:
        return dumps(obj)
    return [head, *(buffer.raw() for buffer in buffers)]


# Unpickling may import modules, and two threads importing the same package at once can each see it
# half initialized (numpy fails so); one unpickles at a time.
_UNPICKLING = threading.Lock()


def loads(frames):
    with _UNPICKLING:
        return pickle.loads(frames[0], buffers=frames[1:])


# Most tasks of a graph call the same few functions. Pickling a function by value costs tens of
# microseconds and unpickling rebuilds it, so the parent keeps each function's pickle for the rest of
# the computation and workers keep the function built from it. Bound methods (which hold their object)
# are not kept. A pickle by value holds the globals the function read, so it is made anew for each
# computation: the user may have changed them in between.
_CACHE_LIMIT = 1024
_PICKLED = {}
_UNPICKLED = {}


def new_computation():
    """Forgets the parent's function pickles."""
    _PICKLED.clear()


def dumps_call(function, args, kwargs):
    """A call as frames: its function's pickle (kept for next time), its arguments' pickle, buffers."""
    entry = _PICKLED.get(id(function))
    if entry is None or entry[0] is not function:
        entry = (function, cloudpickle.dumps(function, protocol=5))
        if isinstance(function, (types.FunctionType, types.BuiltinFunctionType)):
            if len(_PICKLED) >= _CACHE_LIMIT:
                _PICKLED.clear()
            _PICKLED[id(function)] = entry
    return dumps((entry[1], args, kwargs))


def loads_call(frames):
    pickled, args, kwargs = loads(frames)
    function = _UNPICKLED.get(pickled)
    if function is None:
        with _UNPICKLING:
            function = pickle.loads(pickled)
        if len(_UNPICKLED) >= _CACHE_LIMIT:
            _UNPICKLED.clear()
        _UNPICKLED[pickled] = function
    return function, args, kwargs


def _die_with_parent():
    """Asks Linux to kill this process when its parent dies, so no worker outlives its parent."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() == 1:  # the parent died before the request took effect
            os._exit(0)


def _encode(reply):
    try:
        return dumps_reply(reply)
    except Exception as error:
        problem = "result" if reply[0] else f"exception {reply[1]!r}"
        return dumps((False, TypeError(f"the task's {problem} cannot be pickled: {error}"), ""))


def _call(function, args, kwargs):
    try:
        return (True, function(*args, **(kwargs or {})))
    except BaseException as error:  # the task's failure, whatever it is, goes back to the caller
        return (False, error, traceback.format_exc())


def serve_pipes():
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    # Anything the tasks print goes to stderr, keeping stdout for replies.
    sys.stdout = sys.stderr
    while (frames := read_message(requests)) is not None:
        try:
            reply = _call(*loads_call(frames))
        except BaseException as error:
            reply = (False, error, traceback.format_exc())
        write_message(replies, _encode(reply))


_STORE = {}
RUN, FETCH = 1, 2
KEEP, SEND = 1, 2


class Stored:
    """A result held in the worker that runs the call: pickles as a lookup in that worker's store."""

    __slots__ = ("id",)

    def __init__(self, id):
        self.id = id

    def __reduce__(self):
        return stored, (self.id,)

    def __repr__(self):
        return f"Stored({self.id})"


def stored(id):
    return _STORE[id]


def identity(value):
    """Builds a container of stored results where they are."""
    return value


def _handle(frames):
    header = memoryview(frames[0]).cast("Q")
    op, released = header[0], header[1]
    for id in header[2 : 2 + released]:
        _STORE.pop(id, None)
    at, rest = 2 + released, 1
    if op == FETCH:
        count = header[at]
        return (True, [_STORE[id] for id in header[at + 1 : at + 1 + count]])
    result_id, flags, blocks = header[at : at + 3]
    at += 3
    for _ in range(blocks):
        count = header[at]
        ids = header[at + 1 : at + 1 + count]
        frame_count = header[at + 1 + count]
        at += 2 + count
        fetched = loads(frames[rest : rest + frame_count])
        rest += frame_count
        if not fetched[0]:
            raise fetched[1]
        values = fetched[1]
        _STORE.update(zip(ids, values, strict=True))
    reply = _call(*loads_call(frames[rest:]))
    if reply[0]:
        if flags & KEEP:
            _STORE[result_id] = reply[1]
        if not flags & SEND:
            # The parent places the tasks that need a kept result by its size, not its value.
            reply = (True, nbytes(reply[1]) if flags & KEEP else 0)
    return reply


# How many items of a container are sized to estimate the whole.
_SAMPLE = 16


def nbytes(value, depth=0):
    """About how many bytes ``value`` holds: the buffers of arrays and pandas objects, and for large
    containers the size of a sample scaled up, so that it costs at most a few hundred small calls."""
    try:
        size = getattr(value, "nbytes", None)
        if isinstance(size, int):
            return size
        if callable(getattr(value, "memory_usage", None)):  # a pandas DataFrame
            return int(value.memory_usage(index=True).sum())
        own = sys.getsizeof(value)
    except Exception:
        # An object whose size cannot be told still weighs something, and must not fail its task.
        return 64
    if depth < 2 and isinstance(value, list | tuple | set | frozenset | dict) and value:
        items = value.items() if isinstance(value, dict) else value
        sample = list(itertools.islice(items, _SAMPLE))
        sampled = sum(nbytes(item, depth + 1) for item in sample)
        return own + sampled * len(value) // len(sample)
    return own


def _serve_connection(connection):
    with connection, connection.makefile("rb") as requests, connection.makefile("wb") as replies:
        while (frames := read_message(requests)) is not None:
            try:
                reply = _handle(frames)
            except BaseException as error:
                reply = (False, error, traceback.format_exc())
            write_message(replies, _encode(reply))


def _exit_when_parent_closes_stdin():
    sys.stdin.buffer.read()
    os._exit(0)


def _preload(modules):
    for name in modules:
        try:
            with _UNPICKLING:
                importlib.import_module(name)
        except ImportError as error:
            print(f"belated worker: could not preload {name}: {error}", file=sys.stderr)


def serve_socket(path, preload):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    ready = sys.stdout
    sys.stdout = sys.stderr
    ready.write("ready\n")
    ready.flush()
    threading.Thread(target=_exit_when_parent_closes_stdin, daemon=True).start()
    # Imports the first tasks would otherwise wait for, done while the user is still getting ready.
    threading.Thread(target=_preload, args=(preload,), daemon=True).start()
    while True:
        connection, _ = listener.accept()
        threading.Thread(target=_serve_connection, args=(connection,), daemon=True).start()


def main():
    _die_with_parent()
    # Ctrl-C goes to the whole process group; the parent decides what stops, not the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.argv[1:2] == ["--listen"]:
        serve_socket(sys.argv[2], [name for name in sys.argv[3:4] for name in name.split(",") if name])
    else:
        serve_pipes()


if __name__ == "__main__":
    # Run as the imported module, not as __main__: unpickled Stored values look up belated._worker's
    # store, which must be the one this server fills.
    from belated._worker import main as _main

    _main()
