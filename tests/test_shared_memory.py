"""Large buffers travel between the parent and workers in shared memory: one sealed memfd segment,
written once and mapped by every reader, that the kernel frees with its last holder."""

import array
import contextlib
import errno
import fcntl
import functools
import gc
import io
import mmap
import os
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from worker_tasks import alive, wait_gone

import belated
from belated import _worker, compute, delayed

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="memfd segments are Linux's")

LARGE = 2 * _worker.SHARE_FROM // 8  # float64 items: twice the size that goes to shared memory


def backing(buffer):
    """The file mapped at ``buffer``'s first byte in this process, as (device, inode, path), or None
    for memory of no file (the heap)."""
    address = np.frombuffer(buffer, dtype=np.uint8).__array_interface__["data"][0]
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            start, end = (int(part, 16) for part in fields[0].split("-"))
            if start <= address < end:
                path = fields[5].strip() if len(fields) > 5 else ""
                return (fields[3], int(fields[4]), path) if int(fields[4]) else None
    return None


def where_mapped(array_, _):
    return os.getpid(), backing(array_)


def same(value):
    return value


def open_descriptors():
    return len(os.listdir("/proc/self/fd"))


def dev_shm():
    """belated's names in /dev/shm (the machine's other programs have theirs)."""
    return {name for name in os.listdir("/dev/shm") if "belated" in name}


@pytest.fixture(params=["processes", "client"])
def run(request, local_cluster):
    """Computes on the processes scheduler, or on a local cluster of 2 workers."""
    if request.param == "processes":
        return lambda *values: compute(*values, scheduler="processes", num_workers=2)
    return lambda *values: tuple(local_cluster.compute(list(values), sync=True))


def test_an_array_read_by_many_tasks_is_one_segment_that_every_reader_maps(run):
    data = delayed(np.arange(4 * LARGE, dtype=np.float64))
    seen = run(*[delayed(where_mapped)(data, i) for i in range(16)])
    files = {mapped for _, mapped in seen}
    assert len(files) == 1, files
    (mapped,) = files
    assert mapped is not None and mapped[2].startswith("/memfd:belated"), mapped


def test_a_large_result_is_mapped_in_the_parent_and_writable(run):
    (result,) = run(delayed(np.arange)(LARGE, dtype=np.float64))
    mapped = backing(result)
    assert mapped is not None and mapped[2].startswith("/memfd:belated"), mapped
    result[0] = -1.0  # copy-on-write: private to this process
    assert result[0] == -1.0 and result[1] == 1.0


class Holding:
    """A callable object holding an array, as a fitted model does."""

    def __init__(self, held):
        self.held = held

    def __call__(self, i):
        return float(self.held[i]), backing(self.held)


@pytest.mark.parametrize("make", [lambda held: functools.partial(where_mapped, held), Holding])
def test_a_large_array_held_by_the_function_travels_in_shared_memory(run, make):
    # Not pickled whole into the function's own frame (a copy per call, read onto the worker's heap).
    held = np.arange(4 * LARGE, dtype=np.float64)
    function = make(held)
    results = run(*[delayed(function)(i) for i in range(8)])
    if isinstance(function, Holding):
        assert [value for value, _ in results] == [float(i) for i in range(8)]
    mapped = [where for _, where in results]
    assert all(where is not None and where[2].startswith("/memfd:belated") for where in mapped), mapped


def closure_over(held):
    def reader(i, held=held):
        return float(held[i]), backing(held)

    return reader


@pytest.mark.parametrize("make", [closure_over, Holding])
def test_a_function_holding_a_large_array_is_one_segment_for_every_call_of_a_computation(run, make):
    function = make(np.arange(4 * LARGE, dtype=np.float64))
    results = run(*[delayed(function)(i) for i in range(16)])
    assert [value for value, _ in results] == [float(i) for i in range(16)]
    files = {mapped for _, mapped in results}
    assert len(files) == 1, files
    (mapped,) = files
    assert mapped is not None and mapped[2].startswith("/memfd:belated"), mapped


def function_segments(call):
    """The memory files (device, inode) of the segments a call's function travels in."""
    assert call[0] == b"", "a function holding large buffers"
    _, count = _worker._SHARED_FUNCTION.unpack(call[1])
    segments = [frame for frame in call[2 : 2 + count] if isinstance(frame, _worker.Segment)]
    files = [(os.fstat(segment.fd).st_dev, os.fstat(segment.fd).st_ino) for segment in segments]
    for segment in segments:
        segment.close()
    return files


def test_a_function_holding_a_large_array_is_copied_to_shared_memory_once_a_computation(monkeypatch):
    held = np.arange(4 * LARGE, dtype=np.float64)

    def reader(i, held=held):
        return float(held[i])

    _worker.new_computation()
    first, second = (function_segments(_worker.dumps_call(reader, (i,), {})) for i in range(2))
    assert len(first) == 1 and first == second, "sent again, not copied again"
    _worker.new_computation()
    assert function_segments(_worker.dumps_call(reader, (2,), {})) != first, "not kept past its computation"
    # Bounded by bytes: a function larger than the bound is copied with every call.
    monkeypatch.setattr(_worker._SHARED_PICKLED, "limit", held.nbytes)
    _worker.new_computation()
    first, second = (function_segments(_worker.dumps_call(reader, (i,), {})) for i in range(2))
    assert first != second


def test_a_worker_builds_a_function_holding_a_large_array_once_a_computation():
    held = np.arange(4 * LARGE, dtype=np.float64)

    def reader(i, held=held):
        return float(held[i])

    def received(call):
        return [_worker.map_segment(f.fd, f.length) if isinstance(f, _worker.Segment) else f for f in call]

    _worker.new_computation()
    calls = [received(_worker.dumps_call(reader, (i,), {})) for i in range(2)]
    (first, args, _), (second, more, _) = map(_worker.loads_call, calls)
    assert first is second and (first(*args), second(*more)) == (0.0, 1.0)
    _worker.new_computation()
    (third, _, _) = _worker.loads_call(received(_worker.dumps_call(reader, (2,), {})))
    assert third is not first


def test_small_buffers_stay_inline(run):
    (result,) = run(delayed(np.arange)(16, dtype=np.float64))
    assert backing(result) is None


VALUES = {
    "float array": np.random.default_rng(0).random(LARGE),
    "2-d int array": np.arange(LARGE, dtype=np.int32).reshape(-1, 64),
    "fortran array": np.asfortranarray(np.arange(LARGE, dtype=np.float64).reshape(64, -1)),
    "structured array": np.zeros(LARGE // 2, dtype=[("a", "<i8"), ("b", "<f8")]),
    "small array": np.arange(3),
    "bytes": os.urandom(3 * _worker.SHARE_FROM),
    "memoryview": memoryview(os.urandom(3 * _worker.SHARE_FROM)),
    "2-d memoryview": memoryview(np.arange(LARGE, dtype=np.float64).reshape(-1, 8)),
    "small memoryview": memoryview(b"abc"),
    "data frame": pd.DataFrame({"x": np.arange(LARGE), "y": np.ones(LARGE), "s": ["s"] * LARGE}),
    "nested": {"arrays": [np.ones(LARGE), np.zeros(LARGE)], "label": "two"},
}


def assert_same(got, expected):
    if isinstance(expected, pd.DataFrame):
        pd.testing.assert_frame_equal(got, expected)
    elif isinstance(expected, np.ndarray):
        assert got.dtype == expected.dtype and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)
    elif isinstance(expected, memoryview):
        assert isinstance(got, memoryview)
        assert (got.format, got.shape, got.tobytes()) == (expected.format, expected.shape, expected.tobytes())
    elif isinstance(expected, dict):
        assert got.keys() == expected.keys()
        for key in expected:
            assert_same(got[key], expected[key])
    elif isinstance(expected, list):
        assert len(got) == len(expected)
        for item, want in zip(got, expected, strict=True):
            assert_same(item, want)
    else:
        assert got == expected


@pytest.mark.parametrize("name", VALUES)
def test_values_round_trip_to_workers_between_them_and_back(run, name):
    value = VALUES[name]
    # Into a worker as an input, back as a result, and from the task that made it to another.
    made = delayed(same)(delayed(value))
    passed_on = delayed(same)(made)
    got, got_again = run(made, passed_on)
    assert_same(got, value)
    assert_same(got_again, value)


def add_one_in_place(array_):
    array_ += 1
    return array_


def is_writable(array_):
    return array_.flags.writeable


@pytest.mark.parametrize("length", [0, 3, 20_000, LARGE])
def test_an_array_arrives_as_writable_as_it_was_sent_whatever_its_size(run, length):
    # As pickle in band, and dask's schedulers, give it: an array made here, one a task made, and one
    # passed between tasks can be changed in place; a read-only one stays read-only.
    frozen = np.arange(length, dtype=np.float64)
    frozen.flags.writeable = False
    made = delayed(np.arange)(length, dtype=np.float64)
    got, changed, passed_on, inputs = run(
        made,
        delayed(add_one_in_place)(np.arange(length, dtype=np.float64)),
        delayed(add_one_in_place)(made),
        [delayed(is_writable)(np.arange(length, dtype=np.float64)), delayed(is_writable)(frozen)],
    )
    assert got.flags.writeable
    np.testing.assert_array_equal(changed, np.arange(length) + 1)
    np.testing.assert_array_equal(passed_on, np.arange(length) + 1)
    assert inputs == [True, False]
    assert not run(delayed(same)(frozen))[0].flags.writeable


class Recorded(io.BytesIO):
    """A stream that carries descriptors as a socket does: each one attached to an offset."""

    def __init__(self, data=b""):
        super().__init__(data)
        self.fds = []

    def send_fd(self, data, fd):
        self.fds.append((self.tell(), os.dup(fd)))
        self.write(data)

    def take_fd(self):
        return self.fds.pop(0)[1]


def golden(name):
    path = Path(__file__).parent.parent / "crates" / "belated-cluster" / "golden" / "wire.txt"
    lines = dict(line.split() for line in path.read_text().splitlines() if not line.startswith("#"))
    return bytes.fromhex(lines[name])


def test_the_worker_writes_and_reads_the_golden_segment_vector():
    segment = _worker.Segment(memoryview(b"hello"))
    written = Recorded()
    _worker.write_message(written, [segment, b"ab"])
    assert written.getvalue() == golden("segment-then-bytes")
    assert [at for at, _ in written.fds] == [8], "on the segment's length word"
    readback = Recorded(written.getvalue())
    readback.fds = written.fds
    frames = _worker.read_message(readback)
    assert bytes(frames[0]) == b"hello" and frames[1] == b"ab"
    segment.close()


def test_a_segment_is_sealed_and_freed_with_its_last_holder():
    segment = _worker.Segment(memoryview(b"x" * 100))
    with pytest.raises(PermissionError):
        os.write(segment.fd, b"more")
    with pytest.raises(PermissionError):
        os.ftruncate(segment.fd, 10)
    fd = segment.fd
    del segment
    gc.collect()
    with pytest.raises(OSError):
        os.fstat(fd)


def test_a_segment_is_sealed_while_its_pages_are_referenced_elsewhere(monkeypatch):
    """Sealing against writes used to fail with EBUSY (after the kernel's wait of about 150 ms) while
    anything else still referenced the file's pages, as reclaim or migration do for a while on a
    loaded machine; a splice into a pipe holds such a reference until the pipe is closed."""
    real_fcntl, pipes = fcntl.fcntl, []

    def referenced_while_sealed(fd, command, arg=0):
        if command == fcntl.F_ADD_SEALS:
            read, write = os.pipe()
            pipes.extend((read, write))
            assert os.splice(fd, write, 4096, offset_src=0) == 4096
        return real_fcntl(fd, command, arg)

    monkeypatch.setattr(fcntl, "fcntl", referenced_while_sealed)
    try:
        segment = _worker.Segment(memoryview(b"x" * 8192))
    finally:
        for fd in pipes:
            os.close(fd)
    monkeypatch.undo()
    assert pipes, "the pages were referenced when the segment was sealed"
    with pytest.raises(PermissionError):
        os.write(segment.fd, b"more")
    with pytest.raises(PermissionError):
        os.ftruncate(segment.fd, 10)
    with pytest.raises(PermissionError):
        mmap.mmap(segment.fd, segment.length)  # shared and writable
    private = _worker.map_segment(segment.fd, segment.length)
    private[0] = ord("y")
    assert _worker.map_segment(segment.fd, segment.length)[:2] == b"xx"
    segment.close()


def test_a_kernel_without_the_future_write_seal_seals_against_writes_all_the_same(monkeypatch):
    real_fcntl = fcntl.fcntl

    def before_linux_5_1(fd, command, arg=0):
        if command == fcntl.F_ADD_SEALS and arg & _worker._F_SEAL_FUTURE_WRITE:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return real_fcntl(fd, command, arg)

    monkeypatch.setattr(fcntl, "fcntl", before_linux_5_1)
    segment = _worker.Segment(memoryview(b"x" * 100))
    monkeypatch.undo()
    assert fcntl.fcntl(segment.fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_WRITE
    with pytest.raises(PermissionError):
        os.write(segment.fd, b"more")
    segment.close()


class Unreadable:
    """A buffer whose bytes cannot be read."""

    nbytes = 100

    def __getitem__(self, _):
        raise OSError(errno.EIO, os.strerror(errno.EIO))


def fail_memfd_create(*_):
    raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))


def test_a_segment_that_fails_to_build_closes_what_it_opened_and_reports_nothing_more(monkeypatch):
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    before = open_descriptors()
    with pytest.raises(OSError, match=os.strerror(errno.EIO)):
        _worker.Segment(Unreadable())
    copied = _worker.Segment(memoryview(b"x" * 100))
    os.close(copied.detach())
    with pytest.raises(OSError) as dup_failed:
        copied.again()
    assert dup_failed.value.errno == errno.EBADF
    del dup_failed
    with monkeypatch.context() as patch:
        patch.setattr(os, "memfd_create", fail_memfd_create)
        with pytest.raises(OSError, match=os.strerror(errno.EMFILE)):
            _worker.Segment(memoryview(b"x" * 100))
    gc.collect()
    assert [hook.exc_value for hook in unraisable] == []
    # At most: a cluster an earlier test let go of may still be closing its descriptors.
    assert open_descriptors() <= before


def test_channels_pass_segments_over_a_socket_pair_as_copy_on_write_mappings():
    left, right = socket.socketpair()
    with left, right:
        sender, receiver = _worker.Channel(left), _worker.Channel(right)
        payload = np.arange(LARGE, dtype=np.float64)
        frames = _worker.dumps_reply(payload, shared=True)
        assert isinstance(frames[1], _worker.Segment)
        before = open_descriptors()
        writer = threading.Thread(target=_worker.write_message, args=(sender, frames))
        writer.start()
        received = _worker.read_message(receiver)
        writer.join(timeout=30)
        got = _worker.loads(received)
        np.testing.assert_array_equal(got, payload)
        got[0] = 42.0  # the mapping is private: the segment is unchanged for other readers
        assert bytes(_worker.map_segment(frames[1].fd, frames[1].length)[:8]) == payload[:1].tobytes()
        # The descriptor that came is closed once mapped (the mapping keeps its own).
        assert not receiver.fds
        del got, received
        gc.collect()
        # Not equality: a cluster an earlier test let go of may still be closing its descriptors on
        # its own threads. None may be added.
        assert open_descriptors() <= before
        for frame in frames:
            if isinstance(frame, _worker.Segment):
                frame.close()


def raise_from_a_large_input(array_, marker):
    if not os.path.exists(marker):
        Path(marker).touch()
        os._exit(3)
    return float(array_[-1])


def settle(measure, want, tries=200):
    """``measure()`` once it equals ``want`` (threads that forward a dead worker's output end a little
    after it), else its last value."""
    got = measure()
    for _ in range(tries):
        if got == want:
            return got
        threading.Event().wait(0.05)
        got = measure()
    return got


@pytest.fixture(params=["processes", "client"])
def run_one(request):
    """Computes one task on the processes scheduler's 1 worker, or a Client's."""
    if request.param == "processes":
        yield lambda task, retries: compute(task, scheduler="processes", num_workers=1, retries=retries)[0]
        return
    with belated.Client(
        n_workers=1, threads_per_worker=1, dashboard_address=None, set_as_default=False
    ) as client:
        yield lambda task, retries: client.compute(task, sync=True, retries=retries)


def test_a_worker_killed_mid_task_leaves_no_segment_or_descriptor_behind(tmp_path, run_one):
    shm = dev_shm()
    big = np.arange(4 * LARGE, dtype=np.float64)
    assert run_one(delayed(raise_from_a_large_input)(delayed(big), str(tmp_path / "warm")), retries=1)
    gc.collect()
    baseline = open_descriptors()
    for round_ in range(4):
        task = delayed(raise_from_a_large_input)(delayed(big), str(tmp_path / f"kill-{round_}"))
        with pytest.raises(belated.WorkerLostError):
            run_one(task, retries=0)
        gc.collect()
        assert settle(open_descriptors, baseline) == baseline, f"after {round_ + 1} workers died"
    assert run_one(delayed(raise_from_a_large_input)(delayed(big), str(tmp_path / "warm")), retries=1)
    assert dev_shm() == shm


def segments_of(pids):
    """The inodes of belated's segments that the processes ``pids`` hold a descriptor of or map."""
    found = set()
    for pid in pids:
        with contextlib.suppress(FileNotFoundError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(FileNotFoundError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/memfd:belated"):
                        found.add(os.stat(f"/proc/{pid}/fd/{fd}").st_ino)
            with open(f"/proc/{pid}/maps") as maps:
                for line in maps:
                    fields = line.split(maxsplit=5)
                    if len(fields) > 5 and fields[5].startswith("/memfd:belated"):
                        found.add(int(fields[4]))
    return found


@pytest.mark.parametrize("watched", ["not watched", "done callback", "as_completed"])
def test_a_released_futures_segments_are_freed_with_its_last_reference_without_a_gc_pass(
    local_cluster, watched
):
    pids = [os.getpid(), *local_cluster.worker_pids]
    before = segments_of(pids)
    scattered = local_cluster.scatter(np.arange(LARGE, dtype=np.float64))
    made = local_cluster.submit(np.arange, LARGE, pure=False)
    if watched == "done callback":
        called = threading.Event()
        made.add_done_callback(lambda _: called.set())
        scattered.add_done_callback(lambda _: called.set())
        assert called.wait(30)
    elif watched == "as_completed":
        assert set(belated.as_completed([made, scattered])) == {made, scattered}
    # The scattered array in the worker keeping it, the result mapped here, where its future holds it.
    assert made.result(timeout=30)[1] == 1
    assert len(segments_of(pids) - before) == 2
    # Without a gc pass, a cycle through the futures would keep them until the next one ran.
    gc.disable()
    try:
        del scattered, made
        assert settle(lambda: segments_of(pids) - before, set()) == set()
    finally:
        gc.enable()


EXITING = """
import os
import numpy as np, belated
from belated import delayed
big = np.arange({items}, dtype=np.float64)
client = belated.Client(n_workers=2, threads_per_worker=1, dashboard_address=None)
kept = client.persist(delayed(np.add)(delayed(big), 1))
print(float(client.compute(delayed(np.sum)(kept), sync=True)))
processes = belated.compute(*[delayed(os.getpid)() for _ in range(8)], scheduler="processes", num_workers=2)
print(*client.worker_pids, *set(processes))
"""


def test_interpreter_exit_leaves_no_worker_and_nothing_in_dev_shm():
    shm = dev_shm()
    script = textwrap.dedent(EXITING.format(items=4 * LARGE))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    pids = [int(pid) for pid in done.stdout.split("\n")[1].split()]
    assert pids and wait_gone(pids), [pid for pid in pids if alive(pid)]
    assert dev_shm() == shm


CANCELLED_AT_EXIT = """
import os, signal, threading, time
import numpy as np, belated
from belated import delayed


def hold(array_, marker):
    with open(marker, "w") as out:
        out.write(str(os.getpid()))
    time.sleep(1000)
    return float(array_[0])


def interrupt_once_held(marker):
    deadline = time.monotonic() + 60
    while not os.path.exists(marker) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGINT)


marker = {marker!r}
threading.Thread(target=interrupt_once_held, args=(marker,), daemon=True).start()
big = np.arange({items}, dtype=np.float64)
try:
    belated.compute(delayed(hold)(delayed(big), marker), scheduler="processes", num_workers=2)
except KeyboardInterrupt:
    print("interrupted")
print(open(marker).read())
"""


def test_interpreter_exit_after_a_cancelled_compute_whose_worker_maps_a_segment(tmp_path):
    shm = dev_shm()
    script = CANCELLED_AT_EXIT.format(marker=str(tmp_path / "holder"), items=4 * LARGE)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    interrupted, holder = done.stdout.split()
    assert interrupted == "interrupted"
    assert wait_gone([int(holder)]), "the worker holding the segment outlived its parent"
    assert dev_shm() == shm


def test_without_descriptors_every_frame_is_inline(monkeypatch):
    monkeypatch.setattr(_worker, "_SHARED_MEMORY", False)
    frames = _worker.dumps(np.arange(LARGE, dtype=np.float64), shared=True)
    assert not any(isinstance(frame, _worker.Segment) for frame in frames)
    written = io.BytesIO()
    _worker.write_message(written, frames)
    np.testing.assert_array_equal(
        _worker.loads(_worker.read_message(io.BytesIO(written.getvalue()))),
        np.arange(LARGE, dtype=np.float64),
    )


def test_memoryviews_keep_their_format_and_shape():
    for view in [memoryview(array.array("d", [1.5, 2.5])), memoryview(np.arange(12.0).reshape(3, 4)[:, ::2])]:
        got = _worker.loads(_worker.dumps(view))
        assert (got.format, got.shape, got.tolist()) == (view.format, view.shape, view.tolist())


DESCRIPTORS = """
import os, resource
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
import belated
from belated import delayed

def pids(n):
    tasks = [delayed(os.getpid)() for _ in range(4 * n)]
    return len(set(belated.compute(*tasks, scheduler="processes", num_workers=n)))

print(*[pids(n) > 0 for n in (2, 4, 8, 16)])
try:
    pids(40)
except belated.WorkerStartError as error:
    print("error:", error)
print(pids(2) > 0)
"""


def test_processes_clusters_of_four_sizes_fit_in_256_descriptors_and_more_is_a_clear_error():
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(DESCRIPTORS)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    fit, error, after = done.stdout.splitlines()
    assert fit == "True True True True"
    assert "out of file descriptors" in error and "ulimit -n" in error and "fewer workers" in error, error
    assert after == "True"


MANY_LARGE = """
import os, resource
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
import numpy as np
import belated
from belated import _worker, delayed

def arrays(n):
    return [np.full(_worker.SHARE_FROM, i % 251, dtype=np.uint8) for i in range(n)]

def firsts(values):
    return [int(value[0]) for value in values]

expected = [i % 251 for i in range(300)]
for scheduler in ("processes", "client"):
    client = belated.Client(n_workers=2, threads_per_worker=1) if scheduler == "client" else None
    run = {"scheduler": "processes", "num_workers": 2} if client is None else {}
    made = delayed(arrays)(300)
    held = [belated.compute(made, **run)[0] for _ in range(2)]  # 600 large buffers here, kept
    ok = [firsts(values) == expected for values in held]
    ok.append(belated.compute([delayed(firsts)(made), delayed(firsts)(held[0])], **run)[0] == [expected] * 2)
    with open(os.devnull) as still:  # and this process can still open files
        ok.append(still.readable())
    print(scheduler, all(ok))
    if client is not None:
        client.close()
"""


def test_more_large_buffers_than_descriptors_travel_and_stay_held_and_leave_descriptors_free():
    # A mapped segment holds a descriptor for as long as the value built on it lives, and a message
    # carries one per large buffer: past half of the limit they travel, and are held, as copies.
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(MANY_LARGE)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["processes True", "client True"], done.stdout
