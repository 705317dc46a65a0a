"""belated.config as dask.config: YAML files, BELATED_* variables, refresh, update, nested set and get.

What is read at import runs in a fresh interpreter with the environment and HOME the test chooses.
"""

import copy
import functools
import json
import os
import subprocess
import sys
import textwrap

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import belated
from belated import config, delayed


def run_fresh(code, tmp_path, **env):
    """Runs ``code`` in a new interpreter whose HOME is ``tmp_path``; returns what it prints, parsed."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BELATED_")}
    environ.update(HOME=str(tmp_path), **env)
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=environ,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture
def fresh_config():
    """A test that refreshes from its own files leaves the configuration as the process started."""
    yield
    config.refresh()


def test_environment_variables_at_import(tmp_path):
    seen = run_fresh(
        """
        import json, threading
        import belated
        from belated import config, delayed
        thread = delayed(lambda: threading.current_thread() is threading.main_thread())().compute()
        keys = ["scheduler", "num_workers", "retries", "distributed.comm.timeout", "flags", "name", "nothing"]
        print(json.dumps({"ran_inline": thread, **{key: config.get(key) for key in keys}}))
        """,
        tmp_path,
        BELATED_SCHEDULER="sync",
        BELATED_NUM_WORKERS="3",
        BELATED_RETRIES="0",
        BELATED_DISTRIBUTED__COMM__TIMEOUT="2.5",
        BELATED_FLAGS="[1, 'two']",
        BELATED_NAME="hello world",
        BELATED_NOTHING="None",
    )
    assert seen == {
        "ran_inline": True,
        "scheduler": "sync",
        "num_workers": 3,
        "retries": 0,
        "distributed.comm.timeout": 2.5,
        "flags": [1, "two"],
        "name": "hello world",
        "nothing": None,
    }


def test_timeout_and_delayed_pure_from_the_environment(tmp_path):
    seen = run_fresh(
        """
        import json, os, time
        import belated
        from belated import delayed
        def nap():
            time.sleep(60)
        try:
            delayed(nap)().compute()
            outcome = "finished"
        except belated.ComputeTimeoutError:
            outcome = "timed out"
        same_key = delayed(abs)(-1).key == delayed(abs)(-1).key
        print(json.dumps([outcome, same_key]), flush=True)
        os._exit(0)  # not waiting for the sleeping task, which cannot be stopped
        """,
        tmp_path,
        BELATED_TIMEOUT="0.2",
        BELATED_DELAYED_PURE="True",
    )
    assert seen == ["timed out", True]


def test_files_then_belated_config_then_environment(tmp_path):
    user_dir = tmp_path / ".config" / "belated"
    user_dir.mkdir(parents=True)
    (user_dir / "a.yaml").write_text("num_workers: 2\nscheduler: processes\ndistributed:\n  a: 1\n  b: 1\n")
    (user_dir / "b.yml").write_text("distributed:\n  b: 2\n  c: 2\n")
    (user_dir / "ignored.txt").write_text("retries: 99\n")
    extra = tmp_path / "extra.yaml"
    extra.write_text("scheduler: sync\ntimeout: 5\n")
    seen = run_fresh(
        """
        import json
        from belated import config
        print(json.dumps({k: config.get(k, "unset") for k in
            ["num-workers", "scheduler", "distributed", "timeout", "retries"]}))
        """,
        tmp_path,
        BELATED_CONFIG=str(extra),
        BELATED_TIMEOUT="7",
    )
    assert seen == {
        "num-workers": 2,
        "scheduler": "sync",
        "distributed": {"a": 1, "b": 2, "c": 2},
        "timeout": 7,
        "retries": "unset",
    }


def test_refresh_rereads_files_and_replaces_set_values(tmp_path, fresh_config):
    settings = tmp_path / "belated.yaml"
    settings.write_text("num-workers: 5\n")
    config.refresh(paths=[str(tmp_path)], env={})
    assert config.get("num_workers") == 5
    settings.write_text("num-workers: 6\ndelayed_pure: true\n")
    config.set(scheduler="sync")
    assert config.get("num_workers") == 5, "files are read at import and on refresh, not on every get"
    config.refresh(paths=[str(tmp_path)], env={"BELATED_TIMEOUT": "3"})
    assert (config.get("num_workers"), config.get("timeout")) == (6, 3)
    assert config.get("scheduler", None) is None
    assert delayed(abs)(-2).key == delayed(abs)(-2).key, (
        "delayed-pure from a refreshed file reaches the engine"
    )
    config.refresh(paths=[], env={})
    assert delayed(abs)(-2).key != delayed(abs)(-2).key


@pytest.mark.parametrize(
    ("text", "problem"),
    [("a: [unclosed\n", "not valid YAML"), ("- a list\n", "must hold a mapping")],
)
def test_bad_config_file_names_itself(tmp_path, fresh_config, text, problem):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    config.set(num_workers=4)
    with pytest.raises(ValueError, match=problem) as caught:
        config.refresh(paths=[str(bad)], env={})
    assert str(bad) in str(caught.value)
    assert config.get("num_workers") == 4, "a failed refresh leaves the configuration as it was"


def test_nested_set_restores_what_it_changed():
    with config.set({"outer.inner.leaf": 1}, other__leaf_name=2):
        assert config.get("outer") == {"inner": {"leaf": 1}}
        assert config.get("other.leaf-name") == 2
        with config.set({"outer.inner.second": 3, "outer.inner.leaf": 4}):
            assert config.get("outer.inner") == {"leaf": 4, "second": 3}
        assert config.get("outer.inner") == {"leaf": 1}
    assert config.get("outer", None) is None
    assert config.get("other", None) is None
    with pytest.raises(KeyError):
        config.get("outer.inner")


@pytest.mark.parametrize("update", [config.update, "dask"], ids=["belated", "dask"])
def test_update_merges_sections_and_respects_priority(update):
    if update == "dask":
        update = pytest.importorskip("dask.config").update
    old = {"a": {"x": 1, "y": 1}, "keep": 0}
    assert update(old, {"a": {"y": 2, "z_z": 2}, "keep": 9}, priority="old") == {
        "a": {"x": 1, "y": 1, "z_z": 2},
        "keep": 0,
    }
    assert update(old, {"a": {"y": 3}}) == {"a": {"x": 1, "y": 3, "z_z": 2}, "keep": 0}
    # a key keeps the spelling the dict has for it: it was respelled with hyphens beside the old one
    merged = {"a": {"x": 1, "y": 3, "z_z": 4}, "keep": 0, "new_key": 5}
    assert update(old, {"a": {"z-z": 4}, "new_key": 5}) == merged


def test_update_refuses_a_priority_it_does_not_know():
    with pytest.raises(ValueError, match="priority"):
        config.update({}, {}, priority="newest")


def test_update_of_the_live_config_reaches_the_engine():
    try:
        config.update(config.config, {"delayed_pure": True})
        assert delayed(abs)(-3).key == delayed(abs)(-3).key
        config.update(config.config, {"delayed_pure": False})
        assert delayed(abs)(-3).key != delayed(abs)(-3).key
    finally:
        # Unset again, not False: an unset key lets dask's own configuration speak (test_dask_compat).
        config.config.pop("delayed-pure", None)
        config.update(config.config, {})
    assert config.get("delayed_pure", None) is None
    assert delayed(abs)(-3).key != delayed(abs)(-3).key


def test_same_names_as_dask_config():
    dask_config = pytest.importorskip("dask.config")
    for name in [
        "get",
        "set",
        "refresh",
        "update",
        "collect",
        "collect_env",
        "collect_yaml",
        "canonical_name",
        "pop",
        "merge",
        "update_defaults",
        "expand_environment_variables",
        "serialize",
        "deserialize",
    ]:
        assert callable(getattr(dask_config, name)) and callable(getattr(belated.config, name)), name
    env = {"BELATED_A__B": "1", "BELATED_C": "[1, 2]", "BELATED_D": "text"}
    assert belated.config.collect_env(env) == dask_config.collect_env(
        {k.replace("BELATED_", "DASK_"): v for k, v in env.items()}
    )


def test_a_set_reaches_dask_config_until_exit_or_refresh(fresh_config):
    # With dask loaded, `set` is also dask's (`import belated as dask` code sets keys dask reads); a
    # refresh undoes what the sets still in effect did there as well as here.
    dask = pytest.importorskip("dask")
    with config.set({"hunt.inner": 1}):
        assert dask.config.get("hunt.inner") == 1
    assert dask.config.get("hunt", None) is None
    config.set(hunt_kept=2)
    with config.set(hunt_open=3):
        assert (dask.config.get("hunt-kept"), dask.config.get("hunt-open")) == (2, 3)
        config.refresh(paths=[], env={})
        assert (dask.config.get("hunt-kept", None), dask.config.get("hunt-open", None)) == (None, None)
    assert dask.config.get("hunt-open", None) is None and config.get("hunt-open", None) is None


def test_a_section_set_in_part_is_read_whole_as_from_dask(fresh_config):
    # `import belated as dask` code reading a section it set one key of expects dask's answer: the
    # whole section, that key included. Set before dask was loaded, the key never reached dask.
    dask = pytest.importorskip("dask")
    with config.set({"array.hunt": 1}):
        assert config.get("array") == dask.config.get("array")
        assert config.get("array")["chunk-size"] == dask.config.get("array.chunk-size")
    config.config["array"] = {"chunk-size": "1MiB"}
    assert config.get("array") == {**dask.config.get("array"), "chunk-size": "1MiB"}
    assert config.get("array.chunk-size") == "1MiB"


def test_a_set_leaving_after_its_section_went_leaves_dasks_section_alone(fresh_config):
    # The section a set reached into is gone from belated's configuration when the set ends (ended
    # by an earlier set, or refreshed): what it changed there went with it, and dask's own section
    # of that name is not the place to undo it.
    dask = pytest.importorskip("dask")
    slicing = dask.config.get("array.slicing")
    section = config.set({"array.hunt": 1})
    reaching_in = config.set({"array.slicing.hunt": 2})
    section.__exit__(None, None, None)
    reaching_in.__exit__(None, None, None)
    assert dask.config.get("array.slicing") == slicing
    config.set({"array.hunt": 1})
    with config.set({"array.slicing.hunt": 2}):
        config.refresh()
    assert dask.config.get("array.slicing") == slicing
    assert config.get("array.hunt", None) is None


def test_get_reads_dask_configuration_where_belated_sets_nothing(tmp_path):
    # `import belated as dask` code reads dask's settings with `dask.config.get`, with or without a
    # default, before dask itself was imported: dask's defaults answer, belated's own settings win.
    pytest.importorskip("dask")
    found = run_fresh(
        """
        import json, sys
        import belated
        imported_before = "dask" in sys.modules
        with_default = belated.config.get("array.chunk-size", "unset")
        import dask
        with belated.config.set({"array.chunk-size": "1MiB"}):
            own = belated.config.get("array.chunk-size")
        with dask.config.set({"hunt-dask-only": 3}):
            dask_set = belated.config.get("hunt-dask-only"), belated.config.get("hunt_dask_only", 0)
        try:
            belated.config.get("hunt.nowhere")
            missing = "found"
        except KeyError as error:
            missing = str(error)
        print(json.dumps({
            "imported_before": imported_before,
            "with_default": with_default,
            "dask": dask.config.get("array.chunk-size"),
            "own": own,
            "dask_set": dask_set,
            "missing": missing,
            "absent_default": belated.config.get("hunt.nowhere", 5),
        }))
        """,
        tmp_path,
    )
    assert found == {
        "imported_before": False,
        "with_default": found["dask"],
        "dask": found["dask"],
        "own": "1MiB",
        "dask_set": [3, 3],
        "missing": "'hunt.nowhere'",
        "absent_default": 5,
    }
    assert found["dask"] != "unset"


def test_engine_settings_never_import_dask(tmp_path):
    # The engine reads its settings on every compute; importing dask there would cost its import.
    found = run_fresh(
        """
        import json, sys
        import belated
        belated.compute(belated.delayed(abs)(-1))
        print(json.dumps("dask" in sys.modules))
        """,
        tmp_path,
    )
    assert found is False


def _outcome(call):
    """What ``call()`` gives: its value, or the type and arguments of what it raised."""
    try:
        return "returned", call()
    except Exception as error:
        return "raised", type(error), error.args


def _env_of(module, env):
    """``env``, a dict of ``BELATED_*`` variables, named as ``module`` reads them."""
    if module is config:
        return env
    return {name.replace("BELATED_", "DASK_", 1): value for name, value in env.items()}


def _refreshed(module, tmp_path):
    """A dict refreshed from a file, the environment and two sets of registered defaults, and what
    each step left in it."""
    (tmp_path / "settings.yaml").write_text("size: 3\nsection:\n  inner_key: file\n")
    settings = {"leftover": True}
    registered: list = []
    module.update_defaults({"size": 1, "depth": 1, "section": {"inner-key": "default"}}, settings, registered)
    steps = [copy.deepcopy(settings)]
    settings["depth"] = 7  # the user's own setting, which a library's new default does not replace
    module.update_defaults({"size": 2, "depth": 2, "width": 2}, settings, registered)
    steps.append(copy.deepcopy(settings))
    env = _env_of(module, {"BELATED_WIDTH": "true", "BELATED_SECTION__EXTRA": "null"})
    module.refresh(config=settings, defaults=registered, paths=[str(tmp_path)], env=env)
    steps.append(settings)
    return steps, registered


UPDATE_CASES = {
    "new": lambda m: m.update({"x": 1, "y": {"a": 2}}, {"x": 2, "y": {"b": 3}}),
    "old": lambda m: m.update({"x": 1, "y": {"a": 2}}, {"x": 2, "y": {"b": 3}}, priority="old"),
    "new-defaults": lambda m: m.update(
        {"x": 1, "y": {"a": 2}, "z": 0},
        {"x": 2, "y": {"a": 3, "b": 3}, "z": 5},
        priority="new-defaults",
        defaults={"x": 0, "y": {"a": 2}},
    ),
    "section over a value, even with priority old": lambda m: m.update(
        {"a": 1, "b": None}, {"a": {"x": 1}, "b": {"y": 2}}, priority="old"
    ),
    "spellings": lambda m: m.update({"a_b": {"c-d": 1}}, {"a-b": {"c_d": 2, "e_f": 3}}),
    # dask reads a default under the key as ``old`` spells it, never the other spelling
    "new-defaults of a default spelled otherwise": lambda m: m.update(
        {}, {"a-b": {}, "a": None, "a_b": None}, priority="new-defaults", defaults={"a": None, "a_b": {}}
    ),
    "merge": lambda m: m.merge({"a": {"x": 1}, "b": 1}, {"a": {"y": 2}}, {"b": {"c": 3}}),
    "pop": lambda m: (m.pop("a.b_c", config=(given := {"a": {"b-c": 1, "d": 2}})), given),
    "pop of a section": lambda m: (m.pop("a", config=(given := {"a": {"b": 1}, "c": 2})), given),
    "pop with a default": lambda m: m.pop("a.missing", "fallback", config={"a": {}}),
    "pop of a missing key": lambda m: m.pop("a.missing", config={"a": {}}),
    "pop through a value": lambda m: m.pop("a.b.c", config={"a": 1}),
    "pop through a value, with a default": lambda m: m.pop("a.b.c", None, config={"a": 1}),
    "pop of a value's key": lambda m: m.pop("a.b", None, config={"a": 1}),
    "canonical name in a dict": lambda m: [
        m.canonical_name(k, {"a_b": 1, "c-d": 2}) for k in ("a-b", "c_d", "e_f")
    ],
    "expand environment variables": lambda m: m.expand_environment_variables(
        {"a": ["$BELATED_TEST_HOME/x", ("${BELATED_TEST_HOME}",), 3], "b": {"c": "$NOT_SET_ANYWHERE"}}
    ),
    "serialize": lambda m: m.serialize({"a": [1, 2.5, None, "x"]}),
    "environment words": lambda m: m.collect_env(
        _env_of(m, {"BELATED_A": "true", "BELATED_B": "None", "BELATED_C": "null", "BELATED_D": "False"})
    ),
}


@pytest.mark.parametrize("case", UPDATE_CASES)
def test_config_functions_give_what_dasks_give(case, monkeypatch):
    dask_config = pytest.importorskip("dask.config")
    monkeypatch.setenv("BELATED_TEST_HOME", "/home/someone")
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    assert _outcome(lambda: UPDATE_CASES[case](config)) == _outcome(lambda: UPDATE_CASES[case](dask_config))


def test_refresh_and_update_defaults_of_a_given_dict_do_what_dasks_do(tmp_path):
    dask_config = pytest.importorskip("dask.config")
    ours, registered = _refreshed(config, tmp_path)
    assert (ours, registered) == _refreshed(dask_config, tmp_path)
    # As in dask, a refresh forgets the user's setting and the first registered default wins.
    assert ours[-1] == {"size": 3, "depth": 1, "width": True, "section": {"inner-key": "file", "extra": None}}
    assert config.deserialize(dask_config.serialize(ours)) == ours


def test_defaults_a_library_registers_survive_a_refresh(fresh_config):
    registered = len(config.defaults)
    try:
        config.update_defaults({"my-library": {"chunk_size": 10}})
        assert config.get("my-library.chunk-size") == 10
        with config.set({"my-library.chunk-size": 20}):
            config.refresh(paths=[], env={})
            assert config.get("my-library.chunk-size") == 10
        config.update(config.config, {"my-library": {"chunk-size": 30}})
        config.update_defaults({"my-library": {"chunk-size": 11, "depth": 1}})
        assert config.get("my-library") == {"chunk-size": 30, "depth": 1}
        assert config.pop("my_library.chunk_size") == 30
        assert config.get("my-library.chunk-size", None) is None
    finally:
        del config.defaults[registered:]


def test_pop_of_the_live_config_reaches_the_engine():
    config.update(config.config, {"delayed_pure": True})
    assert delayed(abs)(-3).key == delayed(abs)(-3).key
    assert config.pop("delayed_pure") is True
    assert delayed(abs)(-3).key != delayed(abs)(-3).key
    assert config.pop("delayed_pure", "gone") == "gone"


_SPELLINGS = st.sampled_from(["a", "a_b", "a-b", "c", "x_y_z", "x-y_z"])
_NESTED = st.dictionaries(
    _SPELLINGS,
    st.recursive(
        st.one_of(st.integers(0, 3), st.none()),
        lambda inner: st.dictionaries(_SPELLINGS, inner, max_size=3),
        max_leaves=8,
    ),
    max_size=4,
)


@settings(max_examples=300, deadline=None)
@given(_NESTED, _NESTED, st.sampled_from(["new", "old", "new-defaults"]), st.one_of(st.none(), _NESTED))
def test_update_gives_what_dasks_gives_on_any_nested_dicts(old, new, priority, defaults):
    dask_config = pytest.importorskip("dask.config")
    try:
        expected = dask_config.update(copy.deepcopy(old), copy.deepcopy(new), priority, defaults)
    except (AttributeError, TypeError):
        # dask's fails on a default that is a plain value where ``new`` has a section (AttributeError
        # or TypeError, by where it meets it); belated's reads no default there.
        assume(False)
    assert config.update(copy.deepcopy(old), copy.deepcopy(new), priority, defaults) == expected


@settings(max_examples=300, deadline=None)
@given(
    _NESTED, st.lists(st.sampled_from(["a", "a_b", "a-b.c", "a_b.x-y_z", "c.c.c"]), min_size=1, max_size=3)
)
def test_pop_gives_and_leaves_what_dasks_does_on_any_nested_dicts(given_dict, keys):
    dask_config = pytest.importorskip("dask.config")
    ours, theirs = copy.deepcopy(given_dict), copy.deepcopy(given_dict)
    for key in keys:
        popped = _outcome(functools.partial(config.pop, key, config=ours))
        assert popped == _outcome(functools.partial(dask_config.pop, key, config=theirs))
        assert ours == theirs


_KEYS = st.lists(st.sampled_from(["a", "a_b", "a-b", "c", "x_y-z"]), min_size=1, max_size=3).map(".".join)


@settings(max_examples=300, deadline=None)
@given(_NESTED, _KEYS, st.integers())
def test_get_and_set_of_a_given_dict_give_what_dasks_give_on_any_nested_dicts(given_dict, key, value):
    dask_config = pytest.importorskip("dask.config")
    for default in ((), ("fallback",)):
        ours = _outcome(functools.partial(config.get, key, *default, config=given_dict))
        theirs = _outcome(functools.partial(dask_config.get, key, *default, config=given_dict))
        assert ours[:2] == theirs[:2]
    ours_dict, theirs_dict = copy.deepcopy(given_dict), copy.deepcopy(given_dict)
    ours = _outcome(functools.partial(config.set, {key: value}, config=ours_dict))
    theirs = _outcome(functools.partial(dask_config.set, {key: value}, config=theirs_dict))
    assert ours[0] == theirs[0]
    if ours[0] == "raised":
        assert ours[1] is theirs[1]
    assert ours_dict == theirs_dict


def test_set_gives_the_configuration_to_its_with_block_and_refuses_a_value_as_a_section():
    dask_config = pytest.importorskip("dask.config")
    given: dict = {"a": 0}
    for module in (config, dask_config):
        with module.set({"b": 1}, config=given) as got:
            assert got is given
        with module.set(my_library__size=1) as got:
            assert got is module.config
        with pytest.raises(TypeError):
            module.set({"a.b": 1}, config=given)
    assert given == {"a": 0}
    with config.set(scheduler="sync"):
        with pytest.raises(TypeError, match="'scheduler' is 'sync', not a section"):
            config.set({"num-workers": 3, "scheduler.x": 1})
        assert config.get("scheduler") == "sync"
        assert config.get("num-workers", None) is None, "nothing of the refused call stays set"


def _result_or_error_type(call):
    """What ``call()`` gives, or the type it raised: the messages of dask's errors here are Python's
    own (``'int' object is not subscriptable``), belated's name the key."""
    try:
        return "returned", call()
    except Exception as error:
        return "raised", type(error)


@pytest.mark.parametrize("key", ["scheduler.x", "scheduler.t", "num_workers.x.y", "scheduler"])
def test_get_through_a_plain_value_is_a_type_error_as_in_dask(key):
    # belated raised KeyError where its own setting (a string, a number) stood for a section
    dask_config = pytest.importorskip("dask.config")
    ours = _read_with_plain_values_set(config, key)
    assert ours == _read_with_plain_values_set(dask_config, key)
    assert ours[0][0] == ("returned" if key == "scheduler" else "raised")


def _read_with_plain_values_set(module, key):
    with module.set(scheduler="threads", num_workers=2):
        return _result_or_error_type(functools.partial(module.get, key)), module.get(key, "fallback")


def test_get_through_a_plain_value_only_dask_sets_is_dasks_type_error():
    dask_config = pytest.importorskip("dask.config")
    with dask_config.set({"hunt-plain": "text"}):
        assert _result_or_error_type(lambda: config.get("hunt-plain.x")) == ("raised", TypeError)
        assert config.get("hunt-plain.x", 3) == 3
    # belated's own section wins over dask's plain value of the same name
    with config.set({"hunt-mixed.inner": 2}), dask_config.set({"hunt-mixed": 1}):
        assert config.get("hunt-mixed.inner") == 2
        assert config.get("hunt-mixed") == {"inner": 2}


ENVIRONMENTS = {
    "a value, then a key inside it": {"BELATED_X": "1", "BELATED_X__Y": "2"},
    "a key, then the value holding it": {"BELATED_X__Y": "2", "BELATED_X": "1"},
    "a key, then a key inside it": {"BELATED_X__Y": "2", "BELATED_X__Y__Z": "3"},
    "keys side by side": {"BELATED_X__Y": "2", "BELATED_X__Z": "3"},
    "underscores and hyphens": {"BELATED_A_B": "1", "BELATED_C__D_E": "2", "BELATED_NUM_WORKERS": "4"},
    "one key in both spellings": {"BELATED_A_B": "1", "BELATED_A-B": "2"},
}


@pytest.mark.parametrize("case", ENVIRONMENTS)
def test_collect_env_reads_variables_in_order_as_dask_does(case):
    # belated merged a variable into the section an earlier one had replaced, never raised, and
    # spelled keys with hyphens where dask keeps the underscores
    dask_config = pytest.importorskip("dask.config")
    env = ENVIRONMENTS[case]
    ours = _result_or_error_type(lambda: config.collect_env(env))
    assert ours == _result_or_error_type(lambda: dask_config.collect_env(_env_of(dask_config, env)))
    if ours[0] == "raised":
        with pytest.raises(TypeError, match=f"environment variable {list(env)[-1]}"):
            config.collect_env(env)


def test_collect_spells_keys_as_the_winning_source_does_as_dask(tmp_path):
    dask_config = pytest.importorskip("dask.config")
    (tmp_path / "1.yaml").write_text("a_b: 1\nc-d: {e_f: 2}\nflag: {deep: 1}\n")
    (tmp_path / "2.yaml").write_text("a-b: 3\nc_d: {e-f: 4, g_h: 5}\nflag: 2\n")
    env = {"BELATED_A_B": "9", "BELATED_X_Y": "1"}
    collected = config.collect([str(tmp_path)], env=env)
    assert collected == dask_config.collect([str(tmp_path)], env=_env_of(dask_config, env))
    assert list(collected) == ["a_b", "x_y", "c_d", "flag"]
    assert config.merge(*config.collect_yaml([str(tmp_path)])) == dask_config.merge(
        *dask_config.collect_yaml([str(tmp_path)])
    )


def test_collect_yaml_reads_extensions_in_any_case_and_skips_what_it_cannot_read_as_dask(
    tmp_path, monkeypatch
):
    # belated read only lower-case extensions, and a directory named like a file (or a file it may not
    # read) made the read, and so `import belated`, fail where dask skips it
    dask_config = pytest.importorskip("dask.config")
    (tmp_path / "a.yaml").write_text("x: 1\n")
    (tmp_path / "B.YAML").write_text("y: 2\n")
    (tmp_path / "c.Json").write_text('{"z": 3}')
    (tmp_path / "d.yaml").mkdir()
    (tmp_path / "e.txt").write_text("w: 4\n")
    ours = list(config.collect_yaml([str(tmp_path)]))
    assert ours == list(dask_config.collect_yaml([str(tmp_path)])) == [{"y": 2}, {"x": 1}, {"z": 3}]
    assert config.collect([str(tmp_path)], env={}) == dask_config.collect([str(tmp_path)], env={})

    def unreadable(path):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(os, "listdir", unreadable)
    assert list(config.collect_yaml([str(tmp_path)])) == list(dask_config.collect_yaml([str(tmp_path)])) == []


def test_collect_yaml_yields_each_files_settings_and_path_as_dask(tmp_path):
    # belated returned one dict merged from the files, so dask's own `merge(*collect_yaml(paths))`
    # failed on it (AttributeError) and `return_paths=` was a TypeError
    dask_config = pytest.importorskip("dask.config")
    (tmp_path / "a.yaml").write_text("x: 1\ny: {z: 1}\n")
    (tmp_path / "b.yml").write_text("y: {w: 2}\n")
    (tmp_path / "c.yaml").write_text("")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "e.json").write_text('{"x": 3}')
    paths = [str(tmp_path), str(tmp_path / "d"), str(tmp_path / "missing.yaml")]
    for return_paths in (False, True):
        ours = config.collect_yaml(paths, return_paths=return_paths)
        theirs = dask_config.collect_yaml(paths, return_paths=return_paths)
        assert list(ours) == list(theirs)
    assert config.merge(*config.collect_yaml(paths)) == {"x": 3, "y": {"z": 1, "w": 2}}
    (tmp_path / "f.yaml").write_text("- a list\n")
    for module in (config, dask_config):
        with pytest.raises(ValueError, match=r"f\.yaml"):
            list(module.collect_yaml(paths))
