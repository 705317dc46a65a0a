"""belated graphs on Dask distributed (a real LocalCluster on loopback) and on Ray (a local instance)."""

import os
import sys
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from test_properties import Eager, Lazy, programs, run

import belated
from belated import compute, delayed

distributed = pytest.importorskip("distributed")
dask = pytest.importorskip("dask")


def square(x):
    time.sleep(0.05)
    return x * x


def power_3(x):
    return x**3


def corr(x, y):
    return np.corrcoef(x, y)[0][1]


def total_func(x):
    return sum(i for i in x if i % 2 == 0)


def count_func(x):
    return len([i for i in x if i % 2 == 0])


class Boom(Exception):
    pass


def explode(x):
    raise Boom(f"bad {x}")


def tutorial_programs():
    """The seed tutorial's examples 1, 2, 3 and 5 (without their sleeps), as (name, objects) pairs."""
    rng = np.random.default_rng(7)
    matrix = rng.random((10, 1000))
    arrays = [rng.integers(1, 100, 1000) for _ in range(10)]
    return [
        ("example 1", (delayed(square)(3) + delayed(square)(4),)),
        ("example 2", (delayed(np.mean)([delayed(corr)(matrix[0], row) for row in matrix]),)),
        (
            "example 3",
            (
                delayed(sum)(
                    [delayed(square)(i) if i % 2 == 0 else delayed(power_3)(i) for i in range(1, 11)]
                ),
            ),
        ),
        (
            "example 5",
            ([delayed(total_func)(x) for x in arrays], [delayed(count_func)(x) for x in arrays]),
        ),
    ]


def api_program():
    x = delayed(square)(3)
    q, r = delayed(divmod, nout=2)(x, 4)
    return (
        [x, {"k": (x, x + 1)}],
        delayed("belated").upper(),
        q * 10 + r,
        delayed(sorted)([3, 1, 2], reverse=True),
        delayed(square, pure=True)(5),
        delayed(lambda pair, text: (pair, text))((len, "x"), "a-string"),
    )


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as local_cluster:
        yield local_cluster


@pytest.fixture
def client(cluster):
    with belated.Client(cluster.scheduler_address) as connected:
        yield connected


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray")
    # Ray's workers import this module's functions by name, as a cluster's workers import the user's.
    tests = os.path.dirname(os.path.abspath(__file__))
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        runtime_env={"env_vars": {"PYTHONPATH": tests}},
    )
    yield ray
    ray.shutdown()


def test_tutorial_and_api_programs_on_distributed_equal_local_runs(client):
    for name, objects in [*tutorial_programs(), ("api", api_program())]:
        local = compute(*objects, scheduler="sync")
        assert compute(*objects) == local, name
        assert compute(*objects, scheduler=client) == local, name


def test_the_whole_graph_goes_in_one_submission(client, monkeypatch):
    calls = []
    real_get = client._distributed_client.get
    monkeypatch.setattr(
        client._distributed_client, "get", lambda *a, **k: calls.append(a) or real_get(*a, **k)
    )
    xs = [delayed(square)(i) for i in range(50)]
    assert delayed(sum)(xs).compute() == sum(i * i for i in range(50))
    assert len(calls) == 1
    graph, keys = calls[0][0], calls[0][1]
    threads = sum(client.nthreads().values())
    assert len(keys) == 1
    assert len(graph) <= 4 * threads + 1, "51 tasks fused into a few blocks and one result"


def test_fused_blocks_pass_values_across_blocks(client):
    layer = [delayed(square)(i) for i in range(64)]
    while len(layer) > 1:
        layer = [delayed(sum)(layer[i : i + 2]) for i in range(0, len(layer), 2)]
    chain = delayed(square)(1)
    for _ in range(40):
        chain = delayed(sum)([chain, 1])
    assert compute(layer[0], chain, scheduler=client) == compute(layer[0], chain, scheduler="sync")


def test_task_exceptions_come_back_as_themselves_on_distributed(client):
    with pytest.raises(Boom, match="bad 9"):
        delayed(explode)(delayed(square)(3)).compute()
    assert delayed(square)(2).compute() == 4


def test_client_is_the_default_scheduler_only_while_open(cluster):
    client = belated.Client(cluster.scheduler_address)
    assert belated.config.get("scheduler") is client
    assert "Client" in repr(client)
    future = client.compute(delayed(square)(6))
    assert client.gather(future) == 36
    with pytest.raises(TypeError, match="no belated local cluster"):
        client.cluster_stats()
    client.close()
    assert belated.config.get("scheduler", None) is None


def test_dask_accepts_belated_objects_and_belated_accepts_dask_delayed(client):
    x = delayed(square)(4)
    assert dask.compute(x + 1, scheduler="sync") == (17,)
    assert client._distributed_client.compute(x).result() == 16
    assert dask.delayed(square)(x).compute(scheduler="sync") == 256
    theirs = dask.delayed(square)(5)
    assert delayed(sum)([theirs, theirs, x]).compute(scheduler="sync") == 25 + 25 + 16
    (persisted,) = dask.persist(x, scheduler="sync")
    assert persisted.key == x.key and persisted.compute() == 16


def test_persist_on_a_cluster_points_to_the_cluster(client):
    with pytest.raises(NotImplementedError, match=r"client\.persist"):
        delayed(square)(1).persist()


def test_tutorial_and_api_programs_on_ray_equal_local_runs(ray_instance):
    for name, objects in [*tutorial_programs(), ("api", api_program())]:
        assert compute(*objects, scheduler="ray") == compute(*objects, scheduler="sync"), name


def test_task_exceptions_come_back_as_themselves_on_ray(ray_instance):
    with pytest.raises(Boom, match="bad 4"):
        delayed(explode)(delayed(square)(2)).compute(scheduler="ray")


def test_missing_engines_say_which_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"pip install 'belated\[ray\]'"):
        delayed(square)(1).compute(scheduler="ray")
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match=r"pip install 'belated\[dask\]'"):
        belated.Client("tcp://127.0.0.1:1")


def test_ray_must_be_started_first(monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with pytest.raises(belated.BelatedError, match=r"ray.init\(\)"):
        delayed(square)(1).compute(scheduler="ray")


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(program=programs)
def test_random_programs_on_distributed_equal_eager_python(client, program):
    assert compute(*run(program, Lazy(belated)), scheduler=client) == tuple(run(program, Eager()))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=programs)
def test_random_programs_on_ray_equal_eager_python(ray_instance, program):
    assert compute(*run(program, Lazy(belated)), scheduler="ray") == tuple(run(program, Eager()))
