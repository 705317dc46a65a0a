"""belated.diagnostics: callbacks, progress bar and profilers against known task sets."""

import io
import operator
import re
import threading
import time

import pytest
from worker_tasks import Boom, raise_once_exists, touch_then_wait

import belated
from belated import compute, delayed
from belated.diagnostics import CacheProfiler, Callback, Profiler, ProgressBar, ResourceProfiler, visualize


def inc(x):
    return x + 1


def boom(x):
    raise ValueError("boom")


def test_callbacks_see_start_every_task_and_finish_in_dask_signatures(scheduler):
    events = []
    lock = threading.Lock()

    def record(*event):
        with lock:
            events.append(event)

    x = delayed(inc)(1, dask_key_name="x")
    y = delayed(inc)(x, dask_key_name="y")
    with Callback(
        start=lambda dsk: record("start", sorted(dsk)),
        start_state=lambda dsk, state: record("start_state", state.total, state.done),
        pretask=lambda key, dsk, state: record("pretask", key),
        posttask=lambda key, result, dsk, state, worker: record("posttask", key, result, type(worker)),
        finish=lambda dsk, state, errored: record("finish", state.done, errored),
    ):
        assert y.compute() == 3
    assert events == [
        ("start", ["x", "y"]),
        ("start_state", 2, 0),
        ("pretask", "x"),
        ("posttask", "x", 2, int),
        ("pretask", "y"),
        ("posttask", "y", 3, int),
        ("finish", 2, False),
    ]
    events.clear()
    y.compute()
    assert events == [], "the callback is unregistered after the with block"


def test_callbacks_and_profiles_have_tuple_keys_as_dask_gives_them(scheduler, tmp_path):
    # Every hook had the key's text, "('x', 1)", and the graph was keyed by it.
    events = []
    lock = threading.Lock()

    def record(*event):
        with lock:
            events.append(event)

    x = delayed(inc)(1, dask_key_name=("x", 1))
    y = delayed(inc)(x, dask_key_name="y")
    with (
        Callback(
            start=lambda dsk: record("start", set(dsk)),
            pretask=lambda key, dsk, state: record("pretask", key, dsk[key]),
            posttask=lambda key, result, dsk, state, worker: record("posttask", key),
            finish=lambda dsk, state, errored: record("finish", set(dsk.keys()), "('x', 1)" in dsk),
        ),
        Profiler() as prof,
    ):
        assert y.compute() == 3
    assert events == [
        ("start", {("x", 1), "y"}),
        ("pretask", ("x", 1), (inc, 1)),
        ("posttask", ("x", 1)),
        ("pretask", "y", (inc, ("x", 1))),
        ("posttask", "y"),
        ("finish", {("x", 1), "y"}, False),
    ]
    assert len(prof.results) == 2
    assert {(row.key, row.task) for row in prof.results} == {(("x", 1), (inc, 1)), ("y", (inc, ("x", 1)))}
    with open(prof.visualize(filename=str(tmp_path / "profile.html"))) as page:
        assert "&#9632;</span> x " in page.read(), "a tuple key's task is grouped by the key's name"
    dask = pytest.importorskip("dask")
    from dask.diagnostics import Profiler as DaskProfiler

    dask_x = dask.delayed(inc)(1, dask_key_name=("x", 1))
    with DaskProfiler() as dask_prof:
        dask.delayed(inc)(dask_x, dask_key_name="y").compute(scheduler=scheduler)
    assert {row.key for row in dask_prof.results} == {row.key for row in prof.results}


def _cache_profile(package, profiler, scheduler):
    """What ``profiler`` (of ``package``'s diagnostics) saw of a small graph: per key, its metric, and
    the keys whose task finished when its result was let go of (None: at the end)."""
    y = package.delayed(operator.add)(1, 10, dask_key_name="y")
    z = package.delayed(operator.mul)(y, 2, dask_key_name="z")
    w = package.delayed(operator.add)(z, y, dask_key_name="w")
    with profiler:
        assert w.compute(scheduler=scheduler) == 33
    assert profiler.start_time <= profiler.end_time
    cached = {row.cache_time: row.key for row in profiler.results}
    assert len(cached) == len(profiler.results), "one task finished at a time"
    return {
        row.key: (row.metric, row.cache_time <= row.free_time, cached.get(row.free_time))
        for row in profiler.results
    }


@pytest.mark.parametrize("scheduler", ["sync", "threads", "processes"])
def test_cache_profiler_sees_what_dasks_sees_of_the_same_graph(scheduler):
    dask = pytest.importorskip("dask")
    from dask.diagnostics import CacheProfiler as DaskCacheProfiler

    seen = _cache_profile(belated, CacheProfiler(), scheduler)
    # y and z are let go of when w, the last task that needs them, finishes; w at the end.
    assert seen == {"y": (1, True, "w"), "z": (1, True, "w"), "w": (1, True, None)}
    assert seen == _cache_profile(dask, DaskCacheProfiler(), scheduler)


@pytest.mark.parametrize("scheduler", ["sync", "threads"])
def test_cache_profiler_measures_results_by_its_metric_as_dasks_does(scheduler, tmp_path):
    dask = pytest.importorskip("dask")
    from dask.diagnostics import CacheProfiler as DaskCacheProfiler

    ours = CacheProfiler(metric=float)
    seen = _cache_profile(belated, ours, scheduler)
    assert seen == _cache_profile(dask, DaskCacheProfiler(metric=float), scheduler)
    assert {key: metric for key, (metric, _, _) in seen.items()} == {"y": 11.0, "z": 22.0, "w": 33.0}
    assert {row.key: row.task for row in ours.results}["z"] == (operator.mul, "y", 2)
    assert ours._metric_name == DaskCacheProfiler(metric=float)._metric_name == "float"
    assert CacheProfiler(float, "size")._metric_name == "size"
    with open(ours.visualize(filename=str(tmp_path / "cache.html"))) as page:
        assert "up to 33.0 by float" in page.read()


def test_cache_profiler_watches_a_dask_collection_run_by_belated_get():
    da = pytest.importorskip("dask.array")
    from dask.diagnostics import CacheProfiler as DaskCacheProfiler

    total = da.ones(6, chunks=2).sum()
    profilers = CacheProfiler(), DaskCacheProfiler()
    for profiler, scheduler in zip(profilers, [belated.get, "sync"], strict=True):
        with profiler:
            assert total.compute(scheduler=scheduler) == 6
    # The chunks' tasks (dask's sync scheduler runs the finalizing ones fused, under other keys).
    ours, theirs = (
        {row.key: row.metric for row in profiler.results if isinstance(row.key, tuple) and len(row.key) == 2}
        for profiler in profilers
    )
    assert ours == theirs and len(ours) == 3
    assert all(row.cache_time <= row.free_time for row in profilers[0].results)


@pytest.mark.parametrize("scheduler", ["sync", "threads"])
def test_a_callback_with_only_a_posttask_and_a_cache_profiler_watch_dasks_own_schedulers(scheduler):
    # Registered for dask's schedulers, a callback with a posttask but no pretask raised KeyError
    # at the first task's end.
    da = pytest.importorskip("dask.array")
    from dask.diagnostics import CacheProfiler as DaskCacheProfiler
    from dask.diagnostics import Callback as DaskCallback

    total = da.ones(6, chunks=2).sum()
    finished = []
    with Callback(posttask=lambda key, result, dsk, state, worker: finished.append(key)):
        assert total.compute(scheduler=scheduler) == 6
    dask_finished = []
    with DaskCallback(posttask=lambda key, result, dsk, state, worker: dask_finished.append(key)):
        total.compute(scheduler=scheduler)
    # Each compute's finalizing task has a key of its own: the chunks' keys are the same.
    assert sorted(filter(_chunk, finished)) == sorted(filter(_chunk, dask_finished))
    assert len(finished) == len(dask_finished) > 3
    profilers = CacheProfiler(), DaskCacheProfiler()
    for profiler in profilers:
        with profiler:
            total.compute(scheduler=scheduler)
    ours, theirs = (
        {row.key: row.metric for row in profiler.results if _chunk(row.key)} for profiler in profilers
    )
    assert ours == theirs and len(ours) == len(list(filter(_chunk, finished)))


def _chunk(key):
    return isinstance(key, tuple)


def test_finish_hears_of_failures_and_subclasses_override_hooks():
    class Recorder(Callback):
        def __init__(self):
            super().__init__()
            self.finished = []

        def _finish(self, dsk, state, errored):
            self.finished.append((errored, state.failed))

    recorder = Recorder()
    recorder.register()
    try:
        with pytest.raises(ValueError, match="boom"):
            delayed(boom)(1).compute(scheduler="sync")
        assert delayed(inc)(1).compute() == 2
    finally:
        recorder.unregister()
    assert recorder.finished == [(True, 1), (False, 0)]
    assert recorder not in Callback.active


def test_task_graph_mapping_exposes_keys_and_tasks():
    seen = {}

    def start(dsk):
        seen["len"] = len(dsk)
        seen["keys"] = sorted(dsk)
        seen["task"] = dsk["b"]
        seen["missing"] = "nope" in dsk
        with pytest.raises(KeyError):
            dsk["nope"]

    a = delayed(inc)(1, dask_key_name="a")
    b = delayed(inc)(a, dask_key_name="b")
    with Callback(start=start):
        b.compute()
    assert seen == {"len": 2, "keys": ["a", "b"], "task": (inc, "a"), "missing": False}


def test_progress_bar_prints_a_clean_final_line():
    out = io.StringIO()
    xs = [delayed(time.sleep)(0.02) for _ in range(30)]
    with ProgressBar(dt=0.01, out=out) as bar:
        compute(*xs, num_workers=3)
    text = out.getvalue()
    assert text.endswith("\n")
    final = text.rstrip("\n").split("\r")[-1]
    assert re.fullmatch(r"\[#{40}\] \| 100% Completed \| \d+\.\d\d m?s", final), final
    assert bar.last_duration > 0


def test_progress_bar_stays_silent_below_its_minimum():
    out = io.StringIO()
    with ProgressBar(minimum=10, out=out):
        delayed(inc)(1).compute()
    assert out.getvalue() == ""


def test_progress_bar_finishes_after_a_failure():
    out = io.StringIO()
    with ProgressBar(out=out), pytest.raises(ValueError):
        delayed(boom)(1).compute()
    assert out.getvalue().endswith("\n")


def test_profiler_records_every_task_in_dependency_order(scheduler):
    leaves = [delayed(inc)(i) for i in range(8)]
    total = delayed(sum)(leaves)
    with Profiler() as prof:
        assert total.compute(num_workers=2) == sum(range(1, 9))
    assert len(prof.results) == 9
    by_key = {row.key: row for row in prof.results}
    for row in prof.results:
        assert row.start_time <= row.end_time
    final = by_key[total.key]
    assert final.task[0] is sum
    assert all(by_key[leaf.key].end_time <= final.start_time for leaf in leaves)
    workers = {row.worker_id for row in prof.results}
    assert workers == {-1} if scheduler == "sync" else workers <= {0, 1}
    frame = prof.to_dataframe()
    assert list(frame.columns) == ["key", "task", "start_time", "end_time", "worker_id", "duration"]
    prof.clear()
    assert prof.results == []


def test_profiler_accumulates_across_computes():
    with Profiler() as prof:
        delayed(inc)(1).compute()
        delayed(inc)(2).compute()
    assert len(prof.results) == 2


def test_resource_profiler_samples_while_computing():
    with ResourceProfiler(dt=0.05) as rprof:
        delayed(time.sleep)(0.3).compute()
    assert len(rprof.results) >= 3
    assert all(sample.mem > 0 and sample.cpu >= 0 for sample in rprof.results)
    times = [sample.time for sample in rprof.results]
    assert times == sorted(times)


def test_visualize_writes_a_task_stream_page(tmp_path):
    with Profiler() as prof, ResourceProfiler(dt=0.05) as rprof:
        compute(*[delayed(time.sleep)(0.01) for _ in range(6)], num_workers=2)
    path = visualize([prof, rprof], filename=str(tmp_path / "profile.html"))
    page = (tmp_path / "profile.html").read_text()
    assert path.endswith("profile.html")
    assert page.count("<rect class='task'") == 6
    assert "sleep" in page and "<polyline" in page
    with pytest.raises(TypeError, match="cannot visualize"):
        visualize([object()], filename=str(tmp_path / "x.html"))


def test_diagnostics_are_reachable_as_in_dask():
    assert belated.diagnostics.ProgressBar is ProgressBar


def _diagnostic_threads():
    return [t for t in threading.enumerate() if t.name in ("belated-progress", "belated-resources")]


@pytest.mark.parametrize("hook", ["start", "start_state", "pretask", "posttask", "finish"])
def test_every_started_callback_is_finished_whatever_another_raises(hook, scheduler):
    """As dask's local scheduler: a callback whose start ran is finished, even when another raises."""
    events = []

    def recorder(name):
        return Callback(
            start=lambda dsk: events.append(("start", name)),
            finish=lambda dsk, state, errored: events.append(("finish", name, errored)),
        )

    def fail(*args):
        raise KeyError(f"{hook} failed")

    faulty = recorder("faulty")
    setattr(faulty, f"_{hook}", fail)
    bars = [ProgressBar(out=io.StringIO(), dt=0.01), ResourceProfiler(dt=0.01)]
    listeners = [recorder("a"), faulty, recorder("b"), *bars]
    for listener in listeners:
        listener.register()
    try:
        with pytest.raises(KeyError, match=f"{hook} failed"):
            delayed(inc)(1).compute()
    finally:
        for listener in listeners:
            listener.unregister()
    started = {name for event, name, *_ in events if event == "start"}
    finished = {name for event, name, *_ in events if event == "finish"}
    assert started - {"faulty"} <= finished, events
    if hook != "start":
        assert started == {"a", "b", "faulty"}
        assert finished >= {"a", "b"}
    assert all(errored for event, *rest, errored in events if event == "finish") or hook == "finish"
    assert not _diagnostic_threads(), "progress bar and resource profiler threads have stopped"


@pytest.mark.parametrize("scheduler", ["threads", "processes"])
def test_a_task_still_running_when_its_computation_fails_is_not_reported_after_finish(scheduler, tmp_path):
    # dask calls back from the thread that computes, which stops at the failure; belated's pool threads
    # called posttask for the task still running once it ended, after finish and after compute raised.
    events = []
    started, gate = str(tmp_path / "started"), str(tmp_path / "gate")
    running = delayed(touch_then_wait)(started, gate)
    with (
        Callback(
            posttask=lambda key, *_: events.append(("posttask", key)),
            finish=lambda dsk, state, errored: events.append(("finish", errored)),
        ),
        pytest.raises(Boom),
    ):
        compute(running, delayed(raise_once_exists)(started), scheduler=scheduler, num_workers=2)
    events.append("raised")
    open(gate, "w").close()
    # Two tasks that wait for each other run once both workers are free, so after the running task's
    # end and anything called back for it.
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    both = [delayed(touch_then_wait)(first, second), delayed(touch_then_wait)(second, first)]
    assert compute(both, scheduler=scheduler, num_workers=2) == ([True, True],)
    assert events == [("finish", True), "raised"]


def test_sampling_callbacks_finish_quietly_when_their_start_state_never_ran():
    """Another callback's start_state may raise before theirs runs; they are finished all the same."""
    out = io.StringIO()
    ProgressBar(out=out)._finish(None, None, True)
    ResourceProfiler()._finish(None, None, True)
    assert out.getvalue() == ""


def test_callbacks_are_finished_when_the_computation_cannot_start():
    finished = []
    unpicklable = threading.Lock()
    listener = Callback(finish=lambda dsk, state, errored: finished.append(errored))
    with listener, ProgressBar(out=io.StringIO()), pytest.raises(Exception, match="pickle"):
        delayed(id)(unpicklable).compute(scheduler="processes")
    assert finished == [True]
    assert not _diagnostic_threads()


def test_task_graph_lookups_from_several_threads_do_not_deadlock(tmp_path):
    """The graph's key index is built running Python, which lets other threads in; a thread that then
    looks a key up must wait for it without holding the interpreter. Run in a child process: a deadlock
    there fails the test instead of hanging it."""
    script = tmp_path / "lookups.py"
    script.write_text(
        """
import threading, time
from belated import delayed
from belated.diagnostics import Callback

class SlowName:
    slow = False
    def __call__(self, x):
        return x
    @property
    def __name__(self):
        if SlowName.slow:
            time.sleep(0.2)  # lets the other thread in while the index is being built
        return "slow"

def start(dsk):
    SlowName.slow = True
    other = threading.Thread(target=lambda: "x" in dsk)
    other.start()
    time.sleep(0.05)
    assert "x" not in dsk
    other.join()

with Callback(start=start):
    delayed(SlowName())(1).compute(scheduler="sync")
print("ok")
"""
    )
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=20)
    assert done.stdout.strip() == "ok", done.stderr


def test_dasks_own_diagnostics_observe_a_belated_compute_as_they_observe_dask():
    """dask.diagnostics registered around a belated compute hear it, with dask's call signatures."""
    dask = pytest.importorskip("dask")
    from dask.diagnostics import Callback as DaskCallback
    from dask.diagnostics import Profiler as DaskProfiler
    from dask.diagnostics import ProgressBar as DaskProgressBar

    def graph(engine):
        x = engine.delayed(inc)(1, dask_key_name="x")
        y = engine.delayed(inc)(x, dask_key_name="y")
        return engine.delayed(inc)(y, dask_key_name="z")

    def observe(engine):
        events = []
        recorder = DaskCallback(
            start=lambda dsk: events.append(("start", sorted(dsk.keys()), len(dsk))),
            start_state=lambda dsk, state: events.append(("start_state", len(state["finished"]))),
            pretask=lambda key, dsk, state: events.append(("pretask", key, key in dsk)),
            posttask=lambda key, result, dsk, state, worker: events.append(("posttask", key, result, worker)),
            finish=lambda dsk, state, errored: events.append(("finish", len(state["finished"]), errored)),
        )
        out = io.StringIO()
        with recorder, DaskProgressBar(out=out), DaskProfiler() as profiler:
            assert engine.compute(graph(engine), scheduler="sync") == (4,)
        return events, out.getvalue(), sorted(row.key for row in profiler.results)

    dask_events, dask_bar, dask_profile = observe(dask)
    events, bar, profile = observe(belated)
    assert events == dask_events
    assert profile == dask_profile == ["x", "y", "z"]
    assert "100% Completed" in bar and "100% Completed" in dask_bar
    events.clear()
    graph(belated).compute()
    assert events == [], "unregistered after the with block"


def test_belateds_diagnostics_observe_dasks_own_schedulers_as_dasks_diagnostics_do():
    """With import belated as dask, the diagnostics are belated's: around a dask array's own compute they
    heard nothing (no bar, no profile) where dask's do."""
    pytest.importorskip("numpy")
    da = pytest.importorskip("dask.array")
    import dask.diagnostics

    array = da.ones((4, 4), chunks=2).sum()

    def name(key):  # dask's finalize task has a new random token in each compute
        return re.sub("-[0-9a-f]{32}$", "", key) if isinstance(key, str) else key

    def observe(diagnostics, **compute):
        events = []
        recorder = diagnostics.Callback(
            start=lambda dsk: events.append(("start", len(dsk))),
            start_state=lambda dsk, state: events.append(("start_state", len(state["finished"]))),
            pretask=lambda key, dsk, state: events.append(("pretask", name(key), key in dsk)),
            posttask=lambda key, result, dsk, state, worker: events.append(("posttask", name(key), worker)),
            finish=lambda dsk, state, errored: events.append(("finish", len(state["finished"]), errored)),
        )
        out = io.StringIO()
        with recorder, diagnostics.ProgressBar(out=out), diagnostics.Profiler() as profiler:
            assert array.compute(**compute) == 16
        bars = out.getvalue().count("100% Completed")
        return events, bars, sorted(repr(name(row.key)) for row in profiler.results)

    dask_events, dask_bars, dask_profile = observe(dask.diagnostics, scheduler="sync")
    assert observe(belated.diagnostics, scheduler="sync") == (dask_events, dask_bars, dask_profile)
    assert dask_bars == 1 and len(dask_profile) == 6
    # On belated.get, the engine's own callbacks report each task once, not a second time through dask's.
    events, bars, profile = observe(belated.diagnostics, scheduler=belated.get)
    pretasks = [repr(event[1]) for event in events if event[0] == "pretask"]
    assert bars == 1 and len(pretasks) == len(set(pretasks)) == len(profile) == 6


def test_a_dask_progress_bar_is_finished_when_a_belated_task_fails():
    pytest.importorskip("dask")
    from dask.diagnostics import ProgressBar as DaskProgressBar

    threads_before = set(threading.enumerate())
    out = io.StringIO()
    with DaskProgressBar(out=out), pytest.raises(ValueError, match="boom"):
        delayed(boom)(1).compute()
    assert "Completed" in out.getvalue(), "the bar was drawn and finished"
    assert set(threading.enumerate()) <= threads_before, "its timer thread has stopped"


# -- in Jupyter: IPython's display machinery, with a publisher that records what a notebook would get --


@pytest.fixture(params=["kernel", "terminal"])
def ipython_shell(request):
    """An IPython shell as in a Jupyter kernel (it has a ``kernel``), or as in terminal IPython; its
    display publisher records ``(html, display id, whether an update)`` for each display."""
    pytest.importorskip("IPython")
    from IPython.core.displaypub import DisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    class Recording(DisplayPublisher):
        def __init__(self):
            super().__init__()
            self.calls = []

        def publish(self, data, metadata=None, source=None, *, transient=None, update=False, **kwargs):
            self.calls.append((data.get("text/html"), (transient or {}).get("display_id"), update))

    config = Config()
    config.HistoryManager.enabled = False
    shell = InteractiveShell.instance(config=config)
    shell.display_pub = Recording()
    if request.param == "kernel":
        shell.kernel = object()
    yield shell
    InteractiveShell.clear_instance()


def test_progress_bar_in_jupyter_is_one_html_display_updated_in_place(ipython_shell, capsys):
    if getattr(ipython_shell, "kernel", None) is None:
        pytest.skip("for a Jupyter kernel")
    published = ipython_shell.display_pub.calls

    def after_the_first_drawing():
        # The bar has drawn at least once while this task runs, so the end is an update.
        for _ in range(6000):
            if published:
                return 1
            time.sleep(0.01)
        raise AssertionError("the bar never drew")

    with ProgressBar(dt=0.01):
        assert delayed(after_the_first_drawing)().compute() == 1
    (first_html, display_id, first_update), *rest = published
    assert first_update is False and "belated-progress" in first_html
    assert rest and all(update and shown == display_id for _, shown, update in rest)
    assert "100%" in rest[-1][0] and "1/1" in rest[-1][0]
    assert capsys.readouterr().out == ""


def test_progress_bar_in_terminal_ipython_stays_text(ipython_shell, capsys):
    if getattr(ipython_shell, "kernel", None) is not None:
        pytest.skip("for terminal IPython")
    with ProgressBar(dt=0.01):
        delayed(inc)(1).compute()
    assert ipython_shell.display_pub.calls == []
    assert re.search(r"\[#{40}\] \| 100% Completed \|", capsys.readouterr().out)


def test_profiler_visualize_displays_inline_in_jupyter(ipython_shell, tmp_path):
    in_kernel = getattr(ipython_shell, "kernel", None) is not None
    with Profiler() as prof:
        compute(*[delayed(inc)(i) for i in range(3)])
    path = prof.visualize(filename=str(tmp_path / "profile.html"))
    assert (tmp_path / "profile.html").read_text().count("<rect class='task'") == 3
    shown = ipython_shell.display_pub.calls
    if in_kernel:
        ((html, _, _),) = shown
        assert html.count("<rect class='task'") == 3 and "<title>belated profile" not in html
    else:
        assert shown == []
    prof.visualize(filename=path, show=False)
    prof.visualize(filename=path, show=True)
    assert len(shown) == (2 if in_kernel else 1)


@pytest.mark.parametrize("registered", ["dask", "belated"], ids=["dask callback", "belated callback"])
@pytest.mark.parametrize("outer", ["dask", "belated"], ids=["dask outside", "belated outside"])
@pytest.mark.parametrize("inner", ["dask", "belated", "belated.get"], ids=["dask", "belated", "get"])
def test_a_compute_inside_a_task_sees_no_active_callbacks_and_reports_to_none_as_in_dask(
    registered, outer, inner
):
    """dask's schedulers take ``Callback.active`` out for their run: a compute inside a task hears
    nothing of the outer one's callbacks and sees none registered (nor does one beside it). dask's and
    belated's registries, around dask's and belated's computes, and ``belated.get`` behave so."""
    dask = pytest.importorskip("dask")
    from dask.callbacks import Callback as DaskCallback

    libs = {"dask": dask, "belated": belated}
    seen = []
    pretask = lambda key, dsk, state: seen.append(str(key))  # noqa: E731

    def nested(x):
        seen.append(("active", len(DaskCallback.active), len(Callback.active)))
        if inner == "belated.get":
            return belated.get({"inner-get": (inc, x)}, "inner-get")
        return libs[inner].delayed(inc)(x, dask_key_name="inner").compute(scheduler="sync")

    callback = (DaskCallback if registered == "dask" else Callback)(pretask=pretask)
    with callback:
        outer_task = libs[outer].delayed(nested)(1, dask_key_name="outer")
        assert outer_task.compute(scheduler="threads") == 2
        # and it serves the next computation
        assert libs[outer].delayed(inc)(1, dask_key_name="again").compute(scheduler="sync") == 2
    assert seen == ["outer", ("active", 0, 0), "again"]
    assert not DaskCallback.active and not Callback.active


def test_a_callback_unregistered_inside_the_computation_it_serves_stays_unregistered():
    seen = []
    recorder = Callback(pretask=lambda key, dsk, state: seen.append(key))
    recorder.register()
    assert delayed(lambda x: recorder.unregister() or x)(1, dask_key_name="task").compute() == 1
    assert recorder not in Callback.active
    assert delayed(inc)(1).compute() == 2
    assert seen == ["task"]


def test_the_graph_and_state_callbacks_receive_refuse_changes_where_dasks_dicts_take_them(scheduler):
    import dask

    def add_to_graph(key, result, dsk, state, worker):
        dsk[("seen", key)] = result

    def add_to_state(key, dsk, state):
        state["seen"] = key

    x = dask.delayed(inc)(dask.delayed(inc)(1))
    with Callback(posttask=add_to_graph), Callback(pretask=add_to_state):
        assert dask.compute(x, scheduler="sync") == (3,), "dask's own dicts take the change"
    for hooks in ({"posttask": add_to_graph}, {"pretask": add_to_state}):
        # The engine holds the graph and the progress: a change would not reach them, so it is refused.
        with Callback(**hooks), pytest.raises(TypeError, match="does not support item assignment"):
            compute(delayed(inc)(delayed(inc)(1)), scheduler=scheduler)
