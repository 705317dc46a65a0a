"""A worker process of the ``processes`` scheduler: ``python -m belated._worker``.

It reads calls from its standard input and writes results to its standard output, nothing else: the
pipes are private to the parent that started it, and no port is opened. Each message is a frame count,
then frames (length-prefixed bytes): the pickle, then its out-of-band buffers (pickle protocol 5), so
large arrays are not copied into the pickle stream.

A call is ``(function, args, kwargs)``; the reply is ``(True, result)`` or ``(False, exception,
formatted traceback)``. The process ends when its parent closes the pipe or dies.
"""

import os
import pickle
import signal
import struct
import sys
import traceback

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
    """``obj`` as frames: a protocol-5 pickle and its out-of-band buffers."""
    buffers = []
    head = cloudpickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    return [head, *(buffer.raw() for buffer in buffers)]


def loads(frames):
    return pickle.loads(frames[0], buffers=frames[1:])


def _die_with_parent():
    """Asks Linux to kill this process when its parent dies, so no worker outlives its parent."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() == 1:  # the parent died before the request took effect
            os._exit(0)


def main():
    _die_with_parent()
    # Ctrl-C goes to the whole process group; the parent decides what stops, not the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    # Anything the tasks print goes to stderr, keeping stdout for replies.
    sys.stdout = sys.stderr
    while (frames := read_message(requests)) is not None:
        try:
            function, args, kwargs = loads(frames)
            reply = (True, function(*args, **(kwargs or {})))
        except BaseException as error:  # the task's failure, whatever it is, goes back to the caller
            reply = (False, error, traceback.format_exc())
        try:
            out = dumps(reply)
        except Exception as error:
            problem = "result" if reply[0] else f"exception {reply[1]!r}"
            out = dumps((False, TypeError(f"the task's {problem} cannot be pickled: {error}"), ""))
        write_message(replies, out)


if __name__ == "__main__":
    main()
