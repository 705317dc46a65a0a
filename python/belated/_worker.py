"""A worker process of the ``processes`` scheduler or of a local cluster:
``belated._worker CONNECTIONS PRELOAD``, run with the parent's ``sys.path`` by the bootstrap that
``belated-cluster``'s ``process`` starts.

It talks to its parent on socket pairs it inherits, never on its standard streams (which are the
user's: stdin is ``/dev/null``, stdout and stderr are forwarded by the parent line by line): fd 3 is
the control socket (one byte says the worker is ready; its end means the parent is gone, and the
worker exits), fds 4.. are ``CONNECTIONS`` connections, each served on its own thread. Once ready it
imports the comma-separated ``PRELOAD`` modules in the background.

The wire format is described, and implemented for the parent, in ``crates/belated-cluster/src/wire.rs``;
its golden vectors are checked on both sides. In short: a message is a frame count then
length-prefixed frames; a request starts with a header frame of little-endian u64 words
``[op, n, *ids to release, ...]``; a ``RUN`` stores the values of the blocks it carries (other
workers' replies to ``FETCH``), runs the call (arguments that are stored results arrive as
:class:`Stored`), stores its result under the result id (``KEEP``) and replies with it (``SEND``) or
with its size; a ``FETCH`` replies with the list of the stored values asked for; a ``BATCH`` runs
several calls, as many ``RUN`` without blocks would (a call's first frame is its function's pickle,
or empty for a function holding large buffers, which :func:`_shared_call` frames; one flagged
``SAME_FUNCTION`` lacks it: it is the call's before it), and replies to them all in one
message (a header frame ``[n, first, end, *frames of each reply]``, then the replies), unless it runs
past the overrun its header gives: then the connection's :class:`_Watcher` replies at once with what
is done and hands back the calls not started, and the call running replies alone when it ends. Replies are
``(True, value, records)`` or ``(False, the exception's pickle or None, its type name, its message,
formatted traceback, its frames, its cause and context, records)``, where ``records``
are the log records emitted in the worker since its last ``RUN`` reply (a ``FETCH`` reply carries
none), handled in the parent by :func:`belated._logging.receive_record` before the reply is read; a
reply whose value is an int of 64 bits, with no records, is one frame: :data:`INT_REPLY` and the int.
Out-of-band buffers of
:data:`SHARE_FROM` bytes and up travel as sealed memfd segments whose descriptors come with the
bytes (:class:`Channel`); a reader maps them copy-on-write instead of copying them.

The bootstrap loads this module alone, without the ``belated`` package, so that a worker is ready
sooner: keep its imports to the standard library, and import anything else where it is needed.
"""

import array
import collections
import contextlib
import copyreg
import errno
import importlib
import io
import itertools
import linecache
import logging
import mmap
import operator
import os
import pickle
import re
import signal
import socket
import struct
import sys
import threading
import time
import types


def _load_logging():
    """``belated._logging``, which imports only the standard library: in a worker, loaded alone like
    this module, since importing the ``belated`` package would take most of a worker's start."""
    if "belated" in sys.modules:
        from belated import _logging

        return _logging
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("belated._logging", os.path.join(os.path.dirname(__file__), "_logging.py"))
    module = sys.modules["belated._logging"] = module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_logging = _load_logging()
_LENGTH = struct.Struct("<Q")
_ONLY_BYTES = frozenset({bytes})
# Messages of plain frames up to this size are written as one copy of them all.
_JOINED_UP_TO = 1 << 20
# A frame's length word with this bit set: the frame is a shared-memory segment of that length,
# whose descriptor came with the length word.
_SEGMENT = 1 << 63


def read_message(stream):
    """The frames of one message, or None at the end of the stream. A segment frame comes mapped
    (:func:`map_segment`); ``stream`` has ``read(n)``, and ``take_fd()`` if it carries descriptors."""
    header = stream.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        return None
    (count,) = _LENGTH.unpack(header)
    frames = []
    # A batch brings a thousand small frames: those already buffered are taken without a call each.
    take_buffered = getattr(stream, "take_buffered", None)
    while len(frames) < count:
        if take_buffered is not None and take_buffered(frames, count):
            break
        (length,) = _LENGTH.unpack(stream.read(_LENGTH.size))
        if length & _SEGMENT:
            fd = stream.take_fd()
            try:
                frames.append(map_segment(fd, length & ~_SEGMENT))
            finally:
                os.close(fd)
        else:
            frames.append(stream.read(length))
    return frames


def write_message(stream, frames):
    """Writes one message; a :class:`Segment` frame goes as its descriptor (``stream.send_fd``)."""
    if _ONLY_BYTES.issuperset(map(type, frames)) and sum(map(len, frames)) <= _JOINED_UP_TO:
        # A batch's replies, a thousand small frames: framed in one join rather than written in two
        # pieces each. Large frames go out uncopied, below.
        lengths = map(_LENGTH.pack, map(len, frames))
        framed = itertools.chain.from_iterable(zip(lengths, frames, strict=True))
        stream.write(b"".join((_LENGTH.pack(len(frames)), *framed)))
        stream.flush()
        return
    stream.write(_LENGTH.pack(len(frames)))
    for frame in frames:
        if isinstance(frame, Segment):
            stream.send_fd(_LENGTH.pack(frame.length | _SEGMENT), frame.fd)
            continue
        view = memoryview(frame).cast("B")
        stream.write(_LENGTH.pack(view.nbytes))
        stream.write(view)
    stream.flush()


# Out-of-band buffers at least this large travel in shared memory: the writer copies them into a
# segment once and every reader maps it. Below it, the descriptor and mapping cost more than a copy.
SHARE_FROM = 256 * 2**10
# Linux: anonymous memory files, sealed, passed as descriptors. Elsewhere every buffer goes inline.
_SHARED_MEMORY = hasattr(os, "memfd_create") and hasattr(socket, "SCM_RIGHTS")


# Sealed, a reader's mapping can neither fault on a shrunk file nor see it change. Not with the write
# seal: it fails with EBUSY while anything else still references the file's pages (the kernel waits
# about 150 ms for them to go), and on a loaded machine page reclaim, migration or compaction can hold
# one that long. The future-write seal (Linux 5.1) refuses every later write and writable shared
# mapping all the same, checking nothing, and this file was only ever written through its descriptor.
_F_SEAL_FUTURE_WRITE = 0x10  # <linux/fcntl.h>, which Python's fcntl module leaves out


def _seal(fd):
    import fcntl

    fixed = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
    try:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fixed | _F_SEAL_FUTURE_WRITE)
    except OSError as error:
        if error.errno != errno.EINVAL:
            raise
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fixed | fcntl.F_SEAL_WRITE)  # a kernel before 5.1


class Segment:
    """A buffer copied into a sealed anonymous memory file (memfd): nothing to remove, ever; the kernel
    frees it with its last descriptor or mapping. This object owns the descriptor until
    :meth:`detach`."""

    __slots__ = ("fd", "length")

    def __init__(self, view):
        self.fd = -1  # first: __del__ runs even when construction fails
        self.length = view.nbytes
        self.fd = os.memfd_create("belated", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            written = 0
            while written < view.nbytes:
                written += os.write(self.fd, view[written:])
            _seal(self.fd)
        except BaseException:
            self.close()
            raise

    def again(self):
        """Another ``Segment`` of the same memory, owning a descriptor of its own: a call sent takes
        its segments' descriptors, and a segment kept for later calls is sent again without a copy."""
        other = Segment.__new__(Segment)
        other.fd, other.length = -1, self.length
        other.fd = os.dup(self.fd)
        return other

    def detach(self):
        """Its descriptor, which the caller now owns."""
        fd, self.fd = self.fd, -1
        return fd

    def close(self):
        if self.fd >= 0:
            os.close(self.detach())

    __del__ = close


def _descriptor_limit():
    """The process's limit of open descriptors, which segments must leave room under: a segment
    holds one until it is sent, and a mapping one as long as the value built on it lives, so a
    thousand large arrays would otherwise leave a program (under the usual limit of 1,024) unable to
    open a file. The kernel gives the lowest free number: a higher one means that many are open."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return sys.maxsize if soft == resource.RLIM_INFINITY else soft


def map_segment(fd, length):
    """A segment's memory as a buffer, private copy-on-write: pages are shared with every other
    reader until this one writes, so values built on it are writable, and a write is seen by nobody
    else. Past half of the descriptors (the mapping holds a duplicate of ``fd``), a copy. ``fd``
    stays the caller's."""
    if length == 0:
        return b""
    probe = os.dup(fd)
    try:
        if probe < _descriptor_limit() // 2:
            return mmap.mmap(fd, length, access=mmap.ACCESS_COPY)
    finally:
        os.close(probe)
    copy = bytearray(length)
    view, read = memoryview(copy), 0
    while read < length:
        read += os.preadv(fd, [view[read:]], read)
    return copy


def _shared(view):
    """``view`` in a :class:`Segment`, or as it is (inline) past a quarter of the descriptors: the
    reader receives as many as a message has segments before it maps them."""
    try:
        segment = Segment(view)
    except OSError as error:
        if error.errno != errno.EMFILE:
            raise
        return view
    if segment.fd < _descriptor_limit() // 4:
        return segment
    segment.close()
    return view


def _frames(head, buffers, shared):
    frames = [head]
    for buffer in buffers:
        view = buffer.raw()
        frames.append(_shared(view) if shared and _SHARED_MEMORY and view.nbytes >= SHARE_FROM else view)
    return frames


def _memoryview_of(buffer, format, shape):
    view = memoryview(buffer)
    try:
        return view.cast("B").cast(format, shape)
    except (TypeError, ValueError):  # a format cast() does not take: the bytes, as they are
        return view


def _reduce_memoryview(view):
    """Memoryviews, which pickle refuses, travel as their buffer (out of band when contiguous)."""
    data = pickle.PickleBuffer(view) if view.c_contiguous else view.tobytes()
    return _memoryview_of, (data, view.format, view.shape)


_REDUCERS = {memoryview: _reduce_memoryview}


def _with_reducers(pickler_type):
    """``pickler_type`` with :data:`_REDUCERS` ahead of its own (a class attribute: the C pickler reads
    it when built)."""
    table = collections.ChainMap(_REDUCERS, getattr(pickler_type, "dispatch_table", copyreg.dispatch_table))
    return type(pickler_type.__name__, (pickler_type,), {"dispatch_table": table})


_Pickler = _with_reducers(pickle.Pickler)


_CloudPickler = None


def _pickle(pickler_type, obj, buffers, in_band_below=0):
    """``obj``'s protocol-5 pickle; its out-of-band buffers go to ``buffers``, except those smaller than
    ``in_band_below`` bytes, which stay in the pickle."""
    out = io.BytesIO()
    if in_band_below:

        def callback(buffer):
            if buffer.raw().nbytes < in_band_below:
                return True  # true: pickled in band
            buffers.append(buffer)
            return False

    else:
        callback = buffers.append
    pickler_type(out, protocol=5, buffer_callback=callback).dump(obj)
    return out.getvalue()


def _cloud_pickler():
    global _CloudPickler
    if _CloudPickler is None:
        import cloudpickle

        _CloudPickler = _with_reducers(cloudpickle.Pickler)
    return _CloudPickler


def dumps(obj, shared=False, in_band_below=0):
    """``obj`` as frames: a protocol-5 pickle and its out-of-band buffers (but those smaller than
    ``in_band_below`` bytes), large ones as :class:`Segment` if ``shared`` (frames to send, not to
    look at). cloudpickle, so functions and classes defined in ``__main__`` or interactively travel
    by value."""
    buffers = []
    return _frames(_pickle(_cloud_pickler(), obj, buffers, in_band_below), buffers, shared)


def dumps_reply(obj, shared=False, in_band_below=0):
    """:func:`dumps` for what a worker sends back. The plain pickler is several times faster, and
    what it can find by reference here the parent and other workers (same ``sys.path``) can too."""
    buffers = []
    try:
        head = _pickle(_Pickler, obj, buffers, in_band_below)
    except Exception:
        return dumps(obj, shared, in_band_below)
    return _frames(head, buffers, shared)


def _in_band(obj):
    """:func:`dumps_reply`'s pickle of ``obj`` with its buffers in band: one frame."""
    (head,) = dumps_reply(obj, in_band_below=sys.maxsize)
    return head


# Unpickling may import modules, and two threads importing the same package at once can each see it
# half initialized (numpy fails so); one unpickles at a time.
_UNPICKLING = threading.Lock()


class _Unpickler(pickle.Unpickler):
    """Finds this module's names (:func:`stored`, which every result kept in a worker pickles as)
    without importing the ``belated`` package: a reference to ``belated._worker`` would import it,
    which takes most of a worker's start."""

    def find_class(self, module, name):
        if module == __name__:
            return getattr(sys.modules[__name__], name)
        return super().find_class(module, name)


# A pickle names a module it refers to in its own bytes at least once (later references may come from
# its memo), so one that lacks this module's name needs no _Unpickler, whose setup (a Python subclass
# and a file) costs three times the plain loads of a trivial call.
_THIS_MODULE = __name__.encode()


# A protocol-5 pickle refers to a global (a class, a function: what unpickling may import) only through
# STACK_GLOBAL, whose byte a pickle of plain values, the usual call, lacks: that one imports nothing,
# and needs neither the wait for preloads, nor the lock, nor the look for this module's name, which
# together cost more than its plain loads (callgrind: a trivial call's handling, 35.2k instructions
# with them, 32.2k without). A data byte that happens to match takes the long way.
_PROTOCOL_5 = pickle.PROTO + b"\x05"
_STACK_GLOBAL = pickle.STACK_GLOBAL[0]


def _writable(frames):
    """The out-of-band buffers of ``frames`` (after the pickle) as pickle in band rebuilds them: one
    pickled writable unpickles writable (a read-only one is marked so in the pickle). A small frame
    arrives as bytes, on which an array sent writable would be read-only, and a task's ``a += 1`` on
    it would fail."""
    return [bytearray(buffer) if type(buffer) is bytes else buffer for buffer in frames[1:]]


def loads(frames):
    head = frames[0]
    if type(head) is bytes and head[:2] == _PROTOCOL_5 and _STACK_GLOBAL not in head:
        return pickle.loads(head, buffers=_writable(frames)) if len(frames) > 1 else pickle.loads(head)
    if _preloading:
        _await_preload(head)
    with _UNPICKLING:
        # Segments (mmap) are never looked into: only the plain loads of a small call is worth the scan.
        # find(), not `in`: bytes' `in` first tries its operand as an int, and raises and clears a
        # TypeError for every call.
        if "belated" in sys.modules or (type(head) is bytes and head.find(_THIS_MODULE) < 0):
            # Most pickles come alone, and the keyword and the slice cost more than the loads.
            return pickle.loads(head, buffers=_writable(frames)) if len(frames) > 1 else pickle.loads(head)
        return _Unpickler(io.BytesIO(head), buffers=_writable(frames)).load()


# Most tasks of a graph call the same few functions. Pickling a function by value costs tens of
# microseconds and unpickling rebuilds it, so the parent keeps each function's pickle for the rest of
# the computation and workers keep the function built from it. Bound methods (which hold their object)
# are not kept. A pickle by value holds the globals the function read, so both caches are dropped when
# a new computation starts (the user may have changed the globals, and the old ones must not stay
# alive in every worker), and each is bounded by the bytes of the pickles it holds.
_CACHE_BYTES = 32 * 2**20
# A function holding large buffers (a closure or a default over an array, a partial, a callable object
# holding a model) is kept the same way whatever its type, its buffers in shared memory: the parent
# copies them into segments once a computation rather than once a call, and each worker builds the
# function once. Workers map those segments, sharing their pages with the parent's, so this bound is
# on the memory the parent holds for them.
_SHARED_CACHE_BYTES = 2**30


class _FunctionCache:
    """Functions by key, for the latest computation only, holding at most ``limit`` bytes of pickles."""

    def __init__(self, limit):
        self.entries, self.bytes, self.computation, self.limit = {}, 0, 0, limit

    def get(self, key, computation):
        if computation > self.computation:
            self.entries.clear()
            self.bytes, self.computation = 0, computation
        return self.entries.get(key)

    def put(self, key, value, size, computation):
        if computation != self.computation or size > self.limit:
            return
        if self.bytes + size > self.limit:
            self.entries.clear()
            self.bytes = 0
        self.entries[key] = value
        self.bytes += size


_PICKLED = _FunctionCache(_CACHE_BYTES)
_UNPICKLED = _FunctionCache(_CACHE_BYTES)
_SHARED_PICKLED = _FunctionCache(_SHARED_CACHE_BYTES)
_SHARED_UNPICKLED = _FunctionCache(_SHARED_CACHE_BYTES)
# Names a function held in shared memory in workers' caches: never reused, unlike the id() the
# parent's cache is keyed by, which a function made after an evicted one may take.
_shared_serials = itertools.count()
# A call of such a function: an empty first frame, then its name and how many frames its pickle takes.
_SHARED_FUNCTION = struct.Struct("<QQ")
_computation = 0
# The parent's log levels when the computation started, pickled once for all its calls: a worker
# forwards the records the parent would handle, and the user may change levels between computations.
_log_levels = pickle.dumps({})


def new_computation():
    """Starts a new computation: function pickles made before it are not reused, here or in workers."""
    global _computation, _log_levels
    _computation += 1
    _log_levels = pickle.dumps(_logging.worker_levels())


# Values of these types pickle the same whichever pickler does it, and with no out-of-band buffers:
# calls and replies made only of them skip cloudpickle, whose pickler costs several microseconds to
# set up, more than a trivial task itself. The parent's collector and pickle check skip the same
# types (``task::is_plain_scalar`` reads this set).
_PLAIN = frozenset({int, float, complex, bool, str, bytes, type(None)})


def dumps_call(function, args, kwargs):
    """A call as frames: its function's pickle (kept for the rest of the computation), then the pickle
    of its computation, the parent's log levels and its arguments, then buffers. The function's is a
    frame of its own so that a batch sends it once for the calls of one function in a row
    (``SAME_FUNCTION``)."""
    computation = _computation
    entry = _PICKLED.get(id(function), computation)
    if entry is None or entry[0] is not function:
        shared = _SHARED_PICKLED.get(id(function), computation)
        if shared is not None and shared[0] is function:
            return _shared_call(shared, computation, args, kwargs)
        # Large buffers out of band, uncopied: a function can hold them (a partial over an array, a
        # notebook function reading a global array, which travels by value).
        source = _source_of(function)
        large = []
        pickled = _pickle(_cloud_pickler(), (function, source), large, in_band_below=SHARE_FROM)
        if large:
            # Then its buffers go in shared memory, rather than copied whole into a frame of its own
            # and read whole by the worker.
            return _shared_call(_share(function, pickled, large, computation), computation, args, kwargs)
        entry = (function, pickled)
        if isinstance(function, (types.FunctionType, types.BuiltinFunctionType)):
            _PICKLED.put(id(function), entry, len(entry[1]), computation)
    plain = _PLAIN_ARGUMENTS.issuperset(map(type, args))
    if not plain:
        args = tuple(map(_compact, args))
        plain = _PLAIN_ARGUMENTS.issuperset(map(type, args))
    call = (computation, _log_levels, args, kwargs)
    if plain and not kwargs:
        return [entry[1], pickle.dumps(call, protocol=5)]
    return [entry[1], *dumps(call, shared=True)]


# Runner threads ask for calls of one function at once: one copies its buffers, the others wait for it.
_SHARING = threading.Lock()


def _share(function, pickled, large, computation):
    """``(function, serial, frames)``: ``function``'s pickle with its ``large`` buffers copied into
    shared memory, kept for the rest of the computation (as the caches say)."""
    with _SHARING:
        shared = _SHARED_PICKLED.get(id(function), computation)
        if shared is not None and shared[0] is function:
            return shared
        shared = (function, next(_shared_serials), _frames(pickled, large, shared=True))
        size = len(pickled) + sum(buffer.raw().nbytes for buffer in large)
        _SHARED_PICKLED.put(id(function), shared, size, computation)
        return shared


def _shared_call(shared, computation, args, kwargs):
    """A call of a function holding large buffers: an empty frame, the function's serial and frame
    count, its frames (its segments sent again, not copied), then the call's."""
    _, serial, function_frames = shared
    again = [frame.again() if isinstance(frame, Segment) else frame for frame in function_frames]
    head = _SHARED_FUNCTION.pack(serial, len(again))
    return [b"", head, *again, *dumps((computation, _log_levels, args, kwargs), shared=True)]


def loads_call(frames, function=None):
    """A call's function, arguments and keyword arguments; ``function`` is its function when the
    caller has it already (a batch's call flagged ``SAME_FUNCTION``, whose function the call before
    found)."""
    if not frames[0]:  # a function holding large buffers (see _shared_call), found by its serial
        serial, count = _SHARED_FUNCTION.unpack(frames[1])
        computation, levels, args, kwargs = loads(frames[2 + count :])
        _follow_log_levels(computation, levels)
        function = _SHARED_UNPICKLED.get(serial, computation)
        if function is None:
            function_frames = frames[2 : 2 + count]
            function, source = loads(function_frames)
            if source is not None:
                _restore_source(function, *source)
            _SHARED_UNPICKLED.put(serial, function, sum(map(len, function_frames)), computation)
        return function, args, kwargs
    computation, levels, args, kwargs = loads(frames[1:])
    _follow_log_levels(computation, levels)
    return function if function is not None else _function(frames[0], computation), args, kwargs


def _function(pickled, computation):
    if type(pickled) is not bytes:  # a large frame is read into a bytearray, which is no dict key
        pickled = bytes(pickled)
    function = _UNPICKLED.get(pickled, computation)
    if function is None:
        if _preloading:
            _await_preload(pickled)
        with _UNPICKLING:
            function, source = pickle.loads(pickled)
        if source is not None:
            _restore_source(function, *source)
        _UNPICKLED.put(pickled, function, len(pickled), computation)
    return function


# A function defined in __main__ (a script, a notebook cell) travels by value, and cloudpickle names its
# code's file "<dynamic-code>": a worker's traceback would show neither where it was defined nor its
# lines. Its file's name and lines go with it, and the worker puts them back.


def _source_of(function):
    """``(file name, lines)`` of a function pickled by value, as this process's ``linecache`` has them
    (which holds notebook cells too), or None."""
    if not isinstance(function, types.FunctionType) or function.__module__ not in ("__main__", None):
        return None
    filename = function.__code__.co_filename
    lines = linecache.getlines(filename, function.__globals__)
    if not lines:
        return None
    # A worker runs on this machine: it reads a script that is still as this process read it from the
    # file itself. Only a notebook cell's lines, or an edited file's, travel: a script's would go with
    # every call, tens of kilobytes for the few bytes of a small task.
    return (filename, None if _unchanged_on_disk(filename) else lines)


def _unchanged_on_disk(filename):
    size, mtime, _, fullname = linecache.cache.get(filename, (None, None, None, None))
    if mtime is None:
        return False
    try:
        stat = os.stat(fullname)
    except OSError:
        return False
    return (stat.st_size, stat.st_mtime) == (size, mtime)


def _restore_source(function, filename, lines):
    function.__code__ = _in_file(function.__code__, filename)
    if lines is not None:
        # No modification time: linecache.checkcache keeps lines it cannot compare with a file.
        linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)


def _in_file(code, filename):
    """``code``, and the code of the functions and comprehensions inside it, named as from ``filename``."""
    constants = tuple(_in_file(c, filename) if isinstance(c, types.CodeType) else c for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=constants)


# -- log records, forwarded to the parent with the replies ----------------------------------------

# Records wait here for the next RUN reply. A thread that logs while no task runs must not fill the
# worker's memory, so beyond this many the newest are counted instead, and the count is reported.
_MAX_RECORDS = 10_000
_RECORDS: list[dict] = []
_RECORDS_LOCK = threading.Lock()
_dropped = [0]
_levels_lock = threading.Lock()
_levels_of = [0, {}]  # the computation whose levels are set, and those levels


def _keep_record(payload):
    with _RECORDS_LOCK:
        if len(_RECORDS) < _MAX_RECORDS:
            _RECORDS.append(payload)
        else:
            _dropped[0] += 1


def _take_records():
    # Most tasks log nothing, and a batch asks once per call: no lock for them (a record kept while
    # this looks goes with the next reply, as one kept just after it would).
    if not _RECORDS and not _dropped[0]:
        return []
    with _RECORDS_LOCK:
        records = _RECORDS[:]
        _RECORDS.clear()
        dropped, _dropped[0] = _dropped[0], 0
    if dropped:
        message = f"{dropped} log records were dropped: more than {_MAX_RECORDS} waited for a task to end"
        record = logging.makeLogRecord(
            {"name": "belated.worker", "levelno": logging.WARNING, "levelname": "WARNING", "msg": message}
        )
        records.append(_logging._payload(record))
    return records


def _follow_log_levels(computation, pickled):
    """Sets this worker's log levels to the parent's at the start of ``computation``; a logger whose
    level the parent has unset since goes back to inheriting its parent's."""
    if computation <= _levels_of[0]:
        return
    with _levels_lock:
        if computation <= _levels_of[0]:
            return
        levels = pickle.loads(pickled)
        for name in _levels_of[1].keys() - levels.keys():
            logging.getLogger(name or None).setLevel(logging.NOTSET)
        _logging.forward_records(_keep_record, levels)
        _levels_of[:] = [computation, levels]


def loads_reply(frames):
    """In the parent: a ``RUN`` reply as ``(True, value)`` or ``(False, exception, traceback)``, after
    handling the log records it carries."""
    if frames[0][:1] == INT_REPLY:
        return (True, _INT_REPLY.unpack(frames[0])[1])
    reply = loads(frames)
    for payload in reply[-1]:
        _logging.receive_record(payload, worker=f"worker-{payload.get('process')}")
    if reply[0]:
        return reply[:2]
    _, pickled, type_name, message, text, where, chain, _ = reply
    error = _rebuilt(pickled, type_name, message, text)
    with contextlib.suppress(Exception):  # an exception refusing attributes is raised as itself
        _link(error, chain)
    try:
        error.with_traceback(_traceback_through(where))
    except Exception:  # the text, as a note, still says where it failed
        return (False, error, text)
    return (False, error, "")


def _link(error, chain):
    """Gives a rebuilt exception the cause and context it had in the worker (``chain``, from
    :func:`_chain`), each rebuilt with its own frames: a pickle carries neither, and dask's processes
    scheduler and distributed keep both ("The above exception was the direct cause...")."""
    if chain is None:
        return
    cause, context, suppress = chain
    for name, link in (("__cause__", cause), ("__context__", context)):
        if link == "cause":
            error.__context__ = error.__cause__
        elif link is not None:
            pickled, type_name, message, text, where, inner = link
            linked = _rebuilt(pickled, type_name, message, text)
            with contextlib.suppress(Exception):
                linked.with_traceback(_traceback_through(where))
                _link(linked, inner)
            setattr(error, name, linked)
    # Setting __cause__ sets it too: the worker's value goes last.
    error.__suppress_context__ = suppress


class _Rebuilding(Exception):
    """Raised by a stand-in frame while a worker's traceback is rebuilt here."""


def _traceback_through(where):
    """A traceback through the frames ``where`` lists (innermost last), built of real frames whose code
    claims those files, lines and functions (as tblib does): tracebacks, IPython and debuggers then show
    the task's own lines for a task run in a worker, as for one run on a thread."""
    inner = None
    for filename, lineno, function, start, end in reversed(where):
        code = compile(_raising_source(filename, lineno, start, end), filename, "exec")
        renamed = {"co_name": function}
        if sys.version_info >= (3, 11):
            renamed["co_qualname"] = function
        try:
            exec(code.replace(**renamed), {"__rebuilding__": _Rebuilding()})
        except _Rebuilding as stand_in:
            frame = stand_in.__traceback__.tb_next  # the stand-in's, past this function's own
        frame.tb_next = inner
        inner = frame
    return inner


def _raising_source(filename, lineno, start, end):
    """Source whose statement at line ``lineno`` raises, spanning columns ``start`` to ``end`` when they
    are known (else the line's text as this process reads it), so a traceback's carets mark what the
    worker's marked."""
    statement = "raise(__rebuilding__)"

    def fits(start, end):
        # Leading spaces would be an indentation error: "0;" fills the first two columns instead.
        return end - start >= len(statement) and start != 1

    if start is None or end is None or not fits(start, end):
        # The whole line, which a traceback marks with no carets.
        line = linecache.getline(filename, lineno).rstrip()
        start, end = len(line) - len(line.lstrip()), len(line)
    if fits(start, end):
        padded = f"{statement[:-1]}{' ' * (end - start - len(statement))})"
        prefix = "" if start == 0 else "0;" + " " * (start - 2)
        return "\n" * (lineno - 1) + prefix + padded
    return "\n" * (lineno - 1) + statement


def _die_with_parent():
    """Asks Linux to kill this process when its parent dies, so no worker outlives its parent."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() == 1:  # the parent died before the request took effect
            os._exit(0)


# The reply of a call whose result is an int that fits 64 bits, with no log records: ``INT_REPLY``
# then the int, little-endian, in one frame that the parent reads without the interpreter (a pickle
# starts otherwise). A kept result's reply is its size: unpickling it, under the interpreter, was a
# quarter of the parent's share of a trivial task. Packing it costs the worker no more than looking up
# a cache of pickled ints did, and ints the cache did not hold are no longer pickled.
INT_REPLY = b"i"
_INT_REPLY = struct.Struct("<cq")


# A kept plain result's reply, its size, by its size: looked up rather than packed for each call, and
# few sizes are common (an int's is 28 bytes); strings of many lengths fill it once.
_SIZE_REPLIES = {}


def _size_reply(size):
    reply = [_INT_REPLY.pack(INT_REPLY, size)]
    if len(_SIZE_REPLIES) < 1024:
        _SIZE_REPLIES[size] = reply
    return reply


def _encode(reply, records):
    if not reply[0]:
        return _encode_failure(reply[1], records)
    if not records and type(reply[1]) is int:
        try:
            return [_INT_REPLY.pack(INT_REPLY, reply[1])]
        except struct.error:  # beyond 64 bits: pickled as any int
            pass
    if not records and type(reply[1]) in _PLAIN:
        return [pickle.dumps((*reply, records), protocol=5)]
    try:
        return dumps_reply((*reply, records), shared=True)
    except Exception as error:
        return _encode_failure(TypeError(f"the task's result cannot be pickled: {error}"), records)


def _encode_failure(error, records):
    """A failure's reply: the exception's own pickle (``None`` if it cannot be pickled or shown), and its
    type, message and traceback, from which the reader builds a :class:`belated.RemoteError` if it
    cannot rebuild the exception."""
    import traceback  # only failures need it; a worker starts sooner without

    where = _safely(_where, error, [])
    try:
        text = "".join(traceback.format_exception(error))
        # In one frame, buffers inside: an exception holding an array (any size) is rebuilt from it.
        pickled = _in_band(error)
    except Exception:
        # It cannot be pickled, or shown: formatting reads ``__notes__`` and ``__str__``, which the
        # exception may break, and the caller could not print it either.
        text, pickled = _traceback_text(error), None
    chain = _safely(_chain, error, None)
    return dumps_reply((False, pickled, _type_name(error), _message(error), text, where, chain, records))


def _chain(error, seen=None):
    """``(cause, context, suppress context)`` of ``error``, each link ``(pickle or None, type name,
    message, traceback text, frames, its own chain)`` or None; a link seen before (a cycle) ends it,
    as it ends ``traceback``'s display."""
    import traceback

    seen = {id(error)} if seen is None else seen
    links = []
    for linked in (error.__cause__, error.__context__):
        if linked is not None and linked is error.__cause__ and links:
            links.append("cause")  # ``raise X from Y`` inside ``except Y``: one exception, both links
            continue
        if linked is None or id(linked) in seen:
            links.append(None)
            continue
        seen.add(id(linked))
        try:
            pickled = _in_band(linked)
        except Exception:
            pickled = None
        text = _safely(lambda e: "".join(traceback.format_exception(e, chain=False)), linked, "")
        where = _safely(_where, linked, [])
        links.append((pickled, _type_name(linked), _message(linked), text, where, _chain(linked, seen)))
    suppress = bool(error.__suppress_context__)
    return None if links == [None, None] and not suppress else (*links, suppress)


def _where(error):
    """The frames of a task's traceback, each ``(file, line, function, start column, end column)``;
    columns only where Python records them (3.11 on) and the expression is on one line."""
    import traceback

    return [
        (
            frame.filename,
            frame.lineno,
            frame.name,
            getattr(frame, "colno", None),
            getattr(frame, "end_colno", None) if getattr(frame, "end_lineno", None) == frame.lineno else None,
        )
        for frame in traceback.extract_tb(error.__traceback__)
    ]


def _safely(describe, value, fallback):
    try:
        return describe(value)
    except Exception:
        return fallback


def _traceback_text(error):
    """The traceback of an exception whose own formatting fails (it reads ``__notes__`` and
    ``__str__``, which the exception may break)."""
    import traceback

    frames = _safely(lambda e: "".join(traceback.format_tb(e.__traceback__)), error, "")
    return f"Traceback (most recent call last):\n{frames}{_type_name(error)}: {_message(error)}\n"


def _type_name(error):
    kind = type(error)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _message(error):
    return _safely(str, error, "<the exception's message cannot be shown>")


def _rebuilt(pickled, type_name, message, text):
    """A failure's exception as the process that reads the reply rebuilds it, else a
    :class:`belated.RemoteError`: only the reader can tell whether it can (a class only the worker
    imports, an ``__init__`` that does not take the exception's args)."""
    try:
        error = loads([pickled])
    except BaseException:  # a rebuild raising KeyboardInterrupt or SystemExit is no Ctrl-C or exit here
        error = None
    return error if isinstance(error, BaseException) else _remote_error(type_name, message, text)


def _remote_error(type_name, message, text):
    from belated import RemoteError

    remote = RemoteError(f"{type_name}: {message} (it could not be sent back as itself)")
    remote.type_name, remote.traceback_text = type_name, text
    return remote


class _PidMark:
    """Where the kernel cannot wipe a page on fork: true in the process that made it, by its pid."""

    def __init__(self):
        self.pid = os.getpid()

    def __getitem__(self, _):
        return os.getpid() == self.pid


def _fork_mark():
    """A page reading 1 in this process and 0 in any child forked from it (Linux's MADV_WIPEONFORK):
    a child that a task forked, by ``os.fork`` or from C code (which runs no after-fork hook), is told
    right after the call by a memory read, before it takes a lock another thread may have held at the
    fork; ``getpid()`` after every call, a system call, cost a tenth of a trivial call's handling."""
    if sys.platform == "linux":
        try:
            mark = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            mark.madvise(getattr(mmap, "MADV_WIPEONFORK", 18))
            mark[0] = 1
            return mark
        except (OSError, ValueError):  # a kernel before 4.14
            pass
    return _PidMark()


_MARK = _fork_mark()


def _call(function, args, kwargs):
    try:
        reply = (True, function(*args, **kwargs) if kwargs else function(*args))
    except BaseException as error:  # the task's failure, whatever it is, goes back to the caller
        # The traceback starts in the task: this frame is the runtime's, not the user's.
        reply = (False, error.with_traceback(error.__traceback__.tb_next))
    if not _MARK[0]:
        # A child the task forked came back here: only the worker itself answers its parent.
        _end_forked_child(reply[0] or reply[1])
    return reply


def _end_forked_child(error):
    """Ends a child the task forked, as a child that returned from its code ends (``error`` True if
    it returned): status 0, 1 after printing its exception, or its ``SystemExit``'s code; its output
    flushed, nothing of the worker's run."""
    status = 0
    if isinstance(error, SystemExit):
        status = error.code
        if status is None:
            status = 0
        elif not isinstance(status, int):
            print(status, file=sys.stderr)
            status = 1
    elif error is not True:
        import traceback

        with contextlib.suppress(Exception):
            traceback.print_exception(error)
        status = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


_STORE = {}
RUN, FETCH, BATCH, CLIENT = 1, 2, 3, 4
KEEP, SEND, SAME_FUNCTION = 1, 2, 4


class Stored:
    """A result held in the worker that runs the call: pickles as a lookup in that worker's store."""

    __slots__ = ("id",)

    def __init__(self, id):
        self.id = id

    def __reduce__(self):
        return stored, (self.id,)

    def __repr__(self):
        return f"Stored({self.id})"


class StoredMany:
    """A list or tuple of results held in the worker that runs the call, by their ids (native u64s in
    one bytes object), as it pickles. A reduction's inputs (``sum`` of ten thousand results) as
    :class:`Stored` each cost a Python ``__reduce__`` and cloudpickle's ``reducer_override`` apiece:
    24 ms to pickle 10,000, most of the reduction's time in the parent, which builds this from their
    ids where it can (a call's argument) rather than from a :class:`Stored` each."""

    __slots__ = ("as_tuple", "ids")

    def __init__(self, ids, as_tuple):
        self.ids, self.as_tuple = ids, as_tuple

    def __reduce__(self):
        return stored_many, (self.ids, self.as_tuple)


_ID_OF = operator.attrgetter("id")
_ONLY_STORED = frozenset({Stored})


def _compact(arg):
    """``arg``, a list or tuple of stored results only, as one :class:`StoredMany`."""
    if type(arg) in (list, tuple) and len(arg) > 1 and _ONLY_STORED.issuperset(map(type, arg)):
        return StoredMany(array.array("Q", map(_ID_OF, arg)).tobytes(), type(arg) is tuple)
    return arg


# The argument types of a call that the plain pickler takes as they are (a stored result pickles as a
# lookup by id); a set's test is one C call, where a generator's costs a Python frame per argument.
_PLAIN_ARGUMENTS = _PLAIN | {Stored, StoredMany}


def stored(id):
    return _STORE[id]


def stored_many(ids, as_tuple):
    values = list(map(_STORE.__getitem__, memoryview(ids).cast("Q")))
    return tuple(values) if as_tuple else values


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
            raise _rebuilt(*fetched[1:5])
        values = fetched[1]
        _STORE.update(zip(ids, values, strict=True))
    return _settle(result_id, flags, _call(*loads_call(frames[rest:])))


def _settle(result_id, flags, reply):
    """A call's ``reply`` as its flags ask: its result kept, and sent or sized."""
    if reply[0]:
        if flags & KEEP:
            _STORE[result_id] = reply[1]
        if not flags & SEND:
            # The parent places the tasks that need a kept result by its size, not its value.
            reply = (True, nbytes(reply[1]) if flags & KEEP else 0)
    return reply


# How many items of a container are sized to estimate the whole.
_SAMPLE = 16


# The most bytes a size may claim: an object's own ``nbytes`` can say anything, and the parent adds
# sizes up as unsigned 64-bit numbers.
_LARGEST = 1 << 48


def nbytes(value, depth=0):
    """About how many bytes ``value`` holds: the buffers of arrays and pandas objects, and for large
    containers the size of a sample scaled up, so that it costs at most a few hundred small calls."""
    if type(value) in _PLAIN:
        # Every kept result of a trivial task is sized: the two failed attribute lookups below cost
        # five times this.
        return sys.getsizeof(value)
    try:
        size = getattr(value, "nbytes", None)
        if isinstance(size, int):
            # A negative size is no size; it must not fail the task that made the value either.
            return min(size, _LARGEST) if size >= 0 else sys.getsizeof(value)
        if callable(getattr(value, "memory_usage", None)):  # a pandas DataFrame
            return min(max(int(value.memory_usage(index=True).sum()), 0), _LARGEST)
        own = sys.getsizeof(value)
    except BaseException:
        # An object whose size cannot be told (its nbytes raising anything, SystemExit too) still
        # weighs something, and must not fail its task.
        return 64
    if depth < 2 and isinstance(value, list | tuple | set | frozenset | dict) and value:
        items = value.items() if isinstance(value, dict) else value
        sample = list(itertools.islice(items, _SAMPLE))
        sampled = sum(nbytes(item, depth + 1) for item in sample)
        return min(own + sampled * len(value) // len(sample), _LARGEST)
    return own


# Descriptors one read may bring: the kernel ends a read after the bytes that carry descriptors, and
# the wire attaches at most one to each send.
_ANCILLARY = socket.CMSG_SPACE(4 * array.array("i").itemsize) if _SHARED_MEMORY else 0
_READ_SIZE = 1 << 16


class Channel:
    """A connection's socket as the stream :func:`read_message` and :func:`write_message` use: reads
    with ``recvmsg``, keeping the descriptors that come with the bytes (close-on-exec, so a task's
    subprocess never inherits them); writes small pieces buffered, large ones straight."""

    def __init__(self, sock):
        self.sock = sock
        self.buffer = bytearray()
        self.at = 0
        self.fds = collections.deque()
        self.pending = []
        # Held by each writer: a batch's watcher writes while a task of the batch may ask the parent.
        self.lock = threading.Lock()

    def _receive(self, into=None):
        if into is None:
            data, ancillary, flags, _ = self.sock.recvmsg(_READ_SIZE, _ANCILLARY, _CLOEXEC)
            n = len(data)
            self.buffer += data
        else:
            n, ancillary, flags, _ = self.sock.recvmsg_into([into], _ANCILLARY, _CLOEXEC)
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                self.fds.extend(fds)
        if flags & socket.MSG_CTRUNC:
            raise OSError("more descriptors came with one read than the wire sends")
        return n

    def read(self, n):
        """``n`` bytes, fewer only at the end of the stream."""
        have = len(self.buffer) - self.at
        if have >= n:
            out = bytes(self.buffer[self.at : self.at + n])
            self.at += n
            return out
        if n <= _READ_SIZE:
            del self.buffer[: self.at]
            self.at = 0
            while len(self.buffer) < n and self._receive():
                pass
            out = bytes(self.buffer[:n])
            self.at = len(out)
            return out
        # A large frame is read into its own buffer, not through ours.
        out = bytearray(n)
        out[:have] = self.buffer[self.at :]
        self.buffer.clear()
        self.at = 0
        view = memoryview(out)
        while have < n and (got := self._receive(view[have:])):
            have += got
        return out if have == n else bytes(out[:have])

    def take_buffered(self, frames, count):
        """Appends to ``frames`` the plain frames, up to ``count`` in all, whose length word and bytes
        are all buffered; whether it reached ``count``."""
        # Sliced from one copy of what is buffered: a slice of the bytearray made into bytes is two.
        data = bytes(memoryview(self.buffer)[self.at :])
        at, end, left = 0, len(data), count - len(frames)
        unpack, append = _LENGTH.unpack_from, frames.append
        while left and at + _LENGTH.size <= end:
            (length,) = unpack(data, at)
            start = at + _LENGTH.size
            if length & _SEGMENT or start + length > end:
                break
            at = start + length
            append(data[start:at])
            left -= 1
        self.at += at
        return not left

    def take_fd(self):
        if not self.fds:
            raise OSError("a segment frame came without its descriptor")
        return self.fds.popleft()

    def write(self, data):
        if len(data) >= _READ_SIZE:
            self.flush()
            self.sock.sendall(data)
        else:
            self.pending.append(bytes(data))

    def send_fd(self, data, fd):
        self.flush()
        sent = self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
        if sent < len(data):
            self.sock.sendall(data[sent:])

    def flush(self):
        if self.pending:
            self.sock.sendall(b"".join(self.pending))
            self.pending.clear()

    def close(self):
        while self.fds:
            os.close(self.fds.popleft())


_CLOEXEC = getattr(socket, "MSG_CMSG_CLOEXEC", 0)


def _close_segments(frames):
    for frame in frames:
        if isinstance(frame, Segment):
            frame.close()


class _Batch:
    """A batch as its connection's thread and its watcher share it, without a lock a call: the calls
    not started yet, each its index and header words, which each side takes from one iterator
    (taking an item is one step of the interpreter, so each call is taken once, by one side), where
    the batch ends, and the replies not sent yet, which only the connection's thread appends to."""

    __slots__ = ("deadline", "done", "end", "first", "unstarted")

    def __init__(self, deadline, words):
        """``words``: each call's result id, flags and frame count, one after the other."""
        self.deadline, self.end, self.first = deadline, len(words) // 3, 0
        words = iter(words)
        self.unstarted = zip(itertools.count(), words, words, words)
        self.done = []

    def hand_back(self):
        """Ends the batch after the calls started: the others are handed back."""
        left = list(self.unstarted)
        if left:
            self.end = left[0][0]

    def reply(self):
        """The reply frames of the calls done since the last reply. Taken from the front of the list
        the connection's thread appends to, so that a reply it appends meanwhile stays for the next."""
        done = self.done
        taken = done[: len(done)]
        del done[: len(taken)]
        counts = [len(encoded) for encoded in taken]
        header = struct.pack(f"<{3 + len(counts)}Q", len(counts), self.first, self.end, *counts)
        self.first += len(counts)
        return [header, *itertools.chain.from_iterable(taken)]


class _Watcher:
    """A connection's watcher of its batches: once one runs past its overrun, its thread being inside
    a call that turned out slow, it sends the replies the batch has and hands back the calls not
    started (the batch ends after the call running), so that they neither wait for the slow call nor
    keep the parent from running them on a worker that is free."""

    def __init__(self, channel):
        self.channel = channel
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.batch = None
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self):
        with self.changed:
            while True:
                batch = self.batch
                if batch is None:
                    self.changed.wait()
                    continue
                left = batch.deadline - time.monotonic()
                if left > 0:
                    self.changed.wait(left)
                    continue
                self.batch = None
                batch.hand_back()
                frames = batch.reply()
                # Written under the batch's lock, so that its last reply comes after this one; a
                # parent gone is the connection's thread's to notice.
                try:
                    with self.channel.lock:
                        write_message(self.channel, frames)
                except OSError:
                    pass
                finally:
                    _close_segments(frames)


def _handle_batch(frames, watcher):
    """A ``BATCH``'s last reply frames (each call's reply, as ``RUN`` would send it, after a header
    frame), or None when ``watcher`` sent it, the batch having overrun before a call started."""
    # The header as ints once: a memoryview's slices are objects made per call.
    header = memoryview(frames[0]).cast("Q").tolist()
    released = header[1]
    for id in header[2 : 2 + released]:
        _STORE.pop(id, None)
    at = 2 + released
    overrun, count, rest = header[at], header[at + 1], 1
    batch = _Batch(time.monotonic() + overrun / 1e6, header[at + 2 : at + 2 + 3 * count])
    lock = watcher.lock
    with lock:
        watcher.batch = batch
        watcher.changed.notify()
    function_frame = function = None
    followed = 0  # the computation whose log levels this batch has followed
    done, sized = batch.done.append, _SIZE_REPLIES
    # Each call is taken from the batch as it starts, unless the watcher handed it back.
    for _, result_id, flags, frame_count in batch.unstarted:
        rest += frame_count
        try:
            if (
                flags & SAME_FUNCTION
                and frame_count == 1
                and function is not None
                and type(head := frames[rest - 1]) is bytes
                and head[:2] == _PROTOCOL_5
                and _STACK_GLOBAL not in head
            ):
                # Most of a batch of small tasks: a call of plain values to the function before,
                # loaded as loads_call would, and its plain result kept and replied to by its size as
                # _settle and _encode would, without their steps (most of such a call's handling).
                computation, levels, args, kwargs = pickle.loads(head)
                if computation != followed:
                    _follow_log_levels(computation, levels)
                    followed = computation
                reply = _call(function, args, kwargs)
                if (
                    reply[0]
                    and flags & (KEEP | SEND) == KEEP
                    and type(value := reply[1]) in _PLAIN
                    and not _RECORDS
                    and not _dropped[0]
                ):
                    _STORE[result_id] = value
                    # sys.getsizeof's own steps cost twice this; a plain value is not tracked by the
                    # garbage collector, so it adds nothing to it.
                    size = value.__sizeof__()
                    try:
                        done(sized[size])
                    except KeyError:
                        done(_size_reply(size))
                    continue
            else:
                call_frames = frames[rest - frame_count : rest]
                if flags & SAME_FUNCTION:
                    call_frames.insert(0, function_frame)
                else:
                    function_frame, function = call_frames[0], None
                # A call of the function of the call before takes it as that call found it.
                called = loads_call(call_frames, function)
                function = called[0]
                reply = _call(*called)
            reply = _settle(result_id, flags, reply)
        except BaseException as error:
            function, reply = None, (False, error)
        done(_encode(reply, _take_records() if _RECORDS or _dropped[0] else []))
    # Under the watcher's lock: a reply it sends goes before this one.
    with lock:
        watcher.batch = None
        if batch.first == batch.end:
            return None
        return batch.reply()


# The connection whose task runs on this thread (each connection has a thread of its own), which the
# task's requests to the parent travel on; and the keys of the parent's futures it was sent, which the
# parent holds for it until the task ends.
task_channel = threading.local()


def ask_parent(request):
    """The parent's answer to ``request`` (pickled by value), asked on this task's own connection while
    the parent waits for the task's reply; raises what the parent raised."""
    channel = getattr(task_channel, "channel", None)
    if channel is None:
        raise RuntimeError("only a task's own thread can ask the parent: the task's thread is not this one")
    frames = dumps(request)
    with channel.lock:
        write_message(channel, [struct.pack("<2Q", CLIENT, 0), *frames])
    answer = read_message(channel)
    if not answer:
        raise RuntimeError("the parent could not answer this task's request; its error is printed there")
    ok, value = loads(answer)
    if not ok:
        raise value
    return value


def _release_held():
    if task_channel.held:
        held, task_channel.held = task_channel.held, []
        # Refused only by a closed Client, which let go of them all itself.
        with contextlib.suppress(Exception):
            ask_parent(("release", held))


def _serve_connection(connection):
    channel = Channel(connection)
    task_channel.channel, task_channel.held = channel, []
    watcher = None
    with connection:
        while (frames := read_message(channel)) is not None:
            if memoryview(frames[0]).cast("Q")[0] == BATCH:
                watcher = watcher or _Watcher(channel)
                frames = _handle_batch(frames, watcher)
                _release_held()
                if frames is not None:
                    try:
                        with channel.lock:
                            write_message(channel, frames)
                    finally:
                        _close_segments(frames)
                continue
            try:
                reply = _handle(frames)
            except BaseException as error:
                reply = (False, error)
            _release_held()
            # A FETCH's reply goes to another worker, which would not pass records on.
            records = _take_records() if memoryview(frames[0]).cast("Q")[0] == RUN else []
            frames = _encode(reply, records)
            try:
                write_message(channel, frames)
            finally:
                _close_segments(frames)


# Slow imports most tasks that use them need: workers import them as soon as they start when the
# parent has (the first tasks would otherwise wait for them).
USUAL_IMPORTS = ("numpy", "pandas")


def usual_imports():
    """The :data:`USUAL_IMPORTS` this process has made: what its workers preload."""
    return [name for name in USUAL_IMPORTS if name in sys.modules]


# The modules the preload thread has yet to import. An unpickle that names one waits until it is
# imported (two threads importing one package at once can each see it half initialized); the others
# go ahead, so a first task that needs no numpy does not wait for numpy's import.
_preloading = []
_PRELOADED = threading.Condition()


def names_any(pickled, modules):
    """Whether the protocol-5 pickle ``pickled`` names one of ``modules`` or a submodule of one. A
    module's name travels as a short string (``SHORT_BINUNICODE``: its length byte, then it), which
    text that merely mentions it (a function's source lines, travelling with it) is not."""
    if not modules:
        return False
    names = [name.encode() for name in modules]
    exact = [re.escape(bytes([len(name)]) + name) for name in names]
    parent = [b"." + re.escape(name + b".") for name in names]
    return re.search(rb"(?s)\x8c(?:" + b"|".join(exact + parent) + b")", pickled) is not None


def _await_preload(pickled):
    with _PRELOADED:
        _PRELOADED.wait_for(lambda: not names_any(pickled, _preloading))


def _preload():
    try:
        for name in list(_preloading):
            try:
                importlib.import_module(name)
            except Exception as error:  # a module that fails to import fails the tasks that need it
                print(f"belated worker: could not preload {name}: {error!r}", file=sys.stderr)
            with _PRELOADED:
                _preloading.remove(name)
                _PRELOADED.notify_all()
    finally:
        # Whatever ends this thread, no unpickle waits for it any more.
        with _PRELOADED:
            _preloading.clear()
            _PRELOADED.notify_all()


_CONTROL_FD = 3
# Whether this process is a worker (its main() runs), for code a task calls that must know.
serving = False
# Whether a Client answers this worker's tasks' requests (`get_client()` in a task), from the command
# line: an environment variable would reach the tasks' subprocesses and, named BELATED_*, their config.
answered_by_client = False


def main():
    global serving, answered_by_client
    serving = True
    _die_with_parent()
    # Ctrl-C goes to the whole process group; the parent decides what stops, not the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Python fills a pipe in blocks: a task's print() would reach the parent 8 KiB later, or never.
    # Line by line, as on the terminal that dask's worker processes print to.
    sys.stdout.reconfigure(line_buffering=True)
    connections, preload = int(sys.argv[1]), [name for name in sys.argv[2].split(",") if name]
    answered_by_client = sys.argv[3] == "client"
    # Neither the protocol's sockets nor their numbers go to the tasks' subprocesses.
    for fd in range(_CONTROL_FD, _CONTROL_FD + 1 + connections):
        os.set_inheritable(fd, False)
    control = socket.socket(fileno=_CONTROL_FD)
    _logging.forward_records(_keep_record, {})
    # cloudpickle is needed to unpickle any function defined in a script or notebook.
    _preloading[:] = ["cloudpickle", *preload]
    for fd in range(_CONTROL_FD + 1, _CONTROL_FD + 1 + connections):
        threading.Thread(target=_serve_connection, args=(socket.socket(fileno=fd),), daemon=True).start()
    control.sendall(b"r")
    # Imports the first tasks would otherwise wait for, done while the user is still getting ready.
    threading.Thread(target=_preload, daemon=True).start()
    while control.recv(1):
        pass
    os._exit(0)
