"""Configuration, as ``dask.config``: from YAML files, ``BELATED_*`` environment variables and ``set``.

At import, belated reads every ``*.yaml``, ``*.yml`` and ``*.json`` file in ``~/.config/belated/``, then
``$BELATED_CONFIG`` (a file, or a directory of them), then the environment; each source overrides the
ones before it, and all override the defaults libraries register with ``update_defaults``.
``refresh()`` reads them all again. ``set`` changes values for the whole process, or
for a ``with`` block. Keys are case-sensitive, hyphens and underscores in them are interchangeable, and
dots reach into nested sections, as in dask.

An environment variable names a key after ``BELATED_``, lower-cased, with ``__`` for each dot:
``BELATED_NUM_WORKERS=8`` sets ``num-workers``, ``BELATED_DISTRIBUTED__COMM__TIMEOUT=30`` sets
``distributed.comm.timeout``. Values are read as Python literals (``8``, ``2.5``, ``True``, ``None``,
``[1, 2]``) or YAML's words (``true``, ``false``, ``null``, ``none``, in any case), and anything else
stays a string (``processes``), as dask reads ``DASK_*``.

The keys belated reads:

| key (environment variable) | default | meaning |
|---|---|---|
| `scheduler` (`BELATED_SCHEDULER`) | `"threads"` | also `"processes"`, `"sync"`, `"distributed"`, `"ray"` |
| `num-workers` (`BELATED_NUM_WORKERS`) | the cores | threads or worker processes of local schedulers |
| `timeout` (`BELATED_TIMEOUT`) | `None` | seconds until `ComputeTimeoutError` cancels a local compute |
| `retries` (`BELATED_RETRIES`) | `1` | times a task is retried when its worker process dies |
| `delayed-pure` (`BELATED_DELAYED_PURE`) | `False` | the default of `delayed(..., pure=)` |

An open ``belated.Client`` sets ``scheduler`` to itself (unless ``set_as_default=False``).

Other keys are stored and returned by ``get``, so that dask code setting them keeps working; a key
belated does not set is read from dask's own configuration when dask is installed.

>>> import belated
>>> with belated.config.set(scheduler="sync"):
...     belated.config.get("scheduler")
'sync'
>>> belated.config.get("my-library.chunk-size", 4)  # a default when the key is set nowhere
4
"""

import ast
import base64
import builtins  # ``set`` is the class below
import contextlib
import copy
import json
import os
import pathlib
import sys
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import yaml

from belated import _belated

config: dict = {}
"""The configuration in effect: nested dicts with hyphenated keys. Change it with ``set``, ``update``,
``pop``, ``update_defaults`` or ``refresh``, which keep the engine in step with it."""
global_config = config  # as dask names it: functions whose ``config=`` argument hides ``config`` use it

defaults: list = []
"""The defaults libraries registered with ``update_defaults``, oldest first; ``refresh`` applies them
under what the files and the environment set."""

_lock = threading.RLock()
# The sets still in effect that were copied to dask's configuration, oldest first: ``refresh`` undoes
# them there too, newest first.
_in_dask: list = []
_missing = object()
# Set once importing dask failed: ``get`` then stops trying.
_dask_missing = False
_ENV_PREFIX = "BELATED_"
# Names the config file or directory, so it is not a key itself.
_CONFIG_VARIABLE = "BELATED_CONFIG"


def canonical_name(key: str, config: Mapping | None = None) -> str:
    """``key`` as stored: underscores become hyphens (``num_workers`` is ``num-workers``). Given a dict
    ``config``, as in dask: the spelling ``config`` has for ``key`` (hyphens or underscores), else
    ``key`` as written.

    >>> from belated import config
    >>> config.canonical_name("num_workers"), config.canonical_name("a-b", {"a_b": 1})
    ('num-workers', 'a_b')
    """
    if config is None:
        return key.replace("_", "-")
    return _spelled_as_in(config, key)


def _path(key: str) -> tuple:
    return tuple(canonical_name(part) for part in key.split("."))


def _config_changed() -> None:
    """Tells the engine the settings it keeps itself, after any change to ``config``."""
    # Unset here, dask's own setting (when dask is loaded) applies: the engine reads it there.
    pure = _own("delayed-pure", None)
    _belated.set_default_pure(None if pure is None else bool(pure))


def get(key: str, default=_missing, config: Mapping | None = None, override_with=None):
    """The value of ``key`` (dots for nested sections); where belated's configuration does not set it,
    dask's (``dask.config``, when dask is installed), as dask code reading its settings expects, and a
    section both have is dask's with belated's settings over it; ``default`` if neither has the key,
    else ``KeyError`` (``TypeError`` where the key reaches into a plain value, ``scheduler.x`` with
    ``scheduler`` a name, as in dask). As in dask, ``override_with`` is returned instead unless it is
    None (a keyword's default read as ``get(key, override_with=value)``), and ``config`` is a dict to
    read instead of the configuration.

    >>> import belated
    >>> with belated.config.set({"my-library.io.timeout": 30}):
    ...     belated.config.get("my-library.io"), belated.config.get("my-library.io.retries", 0)
    ({'timeout': 30}, 0)
    """
    if override_with is not None:
        return override_with
    if config is not None:
        return _get_in(config, key, default)
    try:
        value = _own(key, _missing, refuse=True)
        # dask's plain value standing for a section matters only where belated's has nothing.
        reads_dask = value is _missing or isinstance(value, Mapping)
        theirs = _dask_value(key, refuse=value is _missing) if reads_dask else _missing
    except TypeError:
        if default is _missing:
            raise
        return default
    if value is _missing:
        value = theirs
    elif isinstance(theirs, Mapping) and isinstance(value, Mapping):
        # A section set in part here (``array.hunt``) is still dask's whole section beside it.
        value = _update(copy.deepcopy(dict(theirs)), value, "new", canonical=False)
    if value is not _missing:
        return value
    if default is _missing:
        raise KeyError(key)
    return default


def _spelled_as_in(given, part: str) -> str:
    """``part`` as a key of ``given`` spells it: as written, else with underscores made hyphens (or,
    where it has none, hyphens made underscores), else as written; as dask reads a dict it is given.
    ``given`` that is no container at all has no spelling."""
    try:
        if part in given:
            return part
        other = part.replace("_", "-") if "_" in part else part.replace("-", "_")
        return other if other in given else part
    except TypeError:
        return part


def _get_in(given: Mapping, key: str, default):
    """``key`` in the dict ``given``, each part as written there: as is, else with hyphens and
    underscores swapped, as dask reads a dict it is given, and failing as dask's does (``KeyError``
    of the part not found, ``TypeError`` where a plain value stands for a section)."""
    node = given
    for part in key.split("."):
        try:
            node = node[_spelled_as_in(node, part)]
        except (TypeError, IndexError, KeyError):
            if default is _missing:
                raise
            return default
    return node


def _dask_config():
    """dask's ``dask.config``, imported on first need; None without dask."""
    global _dask_missing
    if not _dask_missing:
        try:
            import dask.config

            return dask.config
        except ImportError:
            _dask_missing = True
    return None


def _own(key: str, default, refuse: bool = False):
    """The value of ``key`` in belated's own configuration, else ``default``; with ``refuse``, a plain
    value where ``key`` reaches into a section is dask's ``TypeError`` rather than ``default``."""
    node = config
    path = _path(key)
    for depth, part in enumerate(path):
        if not isinstance(node, Mapping):
            if refuse:
                raise TypeError(_not_a_section(key, ".".join(path[:depth]), node))
            return default
        if part not in node:
            return default
        node = node[part]
    return node


def _dask_value(key: str, refuse: bool):
    """The value of ``key`` in dask's configuration, ``_missing`` without dask or the key; with
    ``refuse``, dask's ``TypeError`` where ``key`` reaches into a plain value there."""
    dask_config = _dask_config()
    if dask_config is None:
        return _missing
    try:
        return dask_config.get(key)
    except KeyError:
        return _missing
    except TypeError:
        if refuse:
            raise
        return _missing


def _not_a_section(key: str, section: str, value) -> str:
    return f"cannot get {key!r}: {section!r} is {value!r}, not a section of settings"


def _read(key: str, default):
    """The value of ``key`` as the engine reads it on every compute: belated's own (unless None), else
    dask's where the program imported dask (importing it here would slow the first compute by dask's
    import), else ``default``."""
    value = _own(key, None)
    if value is None:
        dask_config = sys.modules.get("dask.config")
        value = default if dask_config is None else dask_config.get(key, default)
    return value


_PRIORITIES = ("new", "old", "new-defaults")


def update(old: dict, new: Mapping, priority: str = "new", defaults: Mapping | None = None) -> dict:
    """Merges ``new`` into ``old`` section by section, and returns ``old``.

    ``priority`` says which value wins where both have one, as in dask: ``"new"``; ``"old"`` (how
    defaults are filled in); or ``"new-defaults"``, ``new`` only where ``old`` still has the value
    ``defaults`` gives (a library's new defaults replace its old ones, not the user's settings). A
    section in ``new`` replaces a plain value in ``old`` whatever the priority, as in dask. A key keeps
    the spelling ``old`` has for it (hyphens or underscores), else its own; in
    ``belated.config.config``, which updating takes effect at once, keys are made canonical.

    >>> from belated import config
    >>> config.update({"a": {"x_y": 1}}, {"a": {"x-y": 2, "z_z": 3}, "b": 4})
    {'a': {'x_y': 2, 'z_z': 3}, 'b': 4}
    >>> config.update({"x": 1, "y": 5}, {"x": 2, "y": 2}, priority="new-defaults", defaults={"x": 0, "y": 5})
    {'x': 1, 'y': 2}
    """
    if priority not in _PRIORITIES:
        raise ValueError(f"priority must be one of {_PRIORITIES}, not {priority!r}")
    with _lock:
        _update(old, new, priority, canonical=old is config, defaults=defaults)
        if old is config:
            _config_changed()
    return old


def _update(old: dict, new: Mapping, priority: str, canonical: bool, defaults: Mapping | None = None) -> dict:
    """``update``; with ``canonical``, keys are made canonical (belated's configuration, and what is
    collected for it), else they keep the spelling ``old`` has for them."""
    for key, value in new.items():
        if isinstance(key, str):
            key = canonical_name(key) if canonical else _spelled_as_in(old, key)
        default: Any = _missing
        if isinstance(defaults, Mapping):
            # dask reads the default under the key as ``old`` spells it; belated's own configuration
            # spells every key with hyphens, whatever spelling the defaults use.
            spelled = canonical and isinstance(key, str)
            default = defaults.get(_spelled_as_in(defaults, key) if spelled else key, _missing)
        if isinstance(value, Mapping):
            if not isinstance(old.get(key), dict):
                old[key] = {}
            _update(old[key], value, priority, canonical, None if default is _missing else default)
        elif (
            priority == "new"
            or key not in old
            or (priority == "new-defaults" and default is not _missing and default == old[key])
        ):
            old[key] = value
    return old


def merge(*dicts: Mapping) -> dict:
    """A new dict of ``dicts`` merged section by section, later ones winning, as dask's ``merge``.

    >>> from belated import config
    >>> config.merge({"a": {"x": 1}, "b": 1}, {"a": {"y": 2}, "b": 2})
    {'a': {'x': 1, 'y': 2}, 'b': 2}
    """
    merged: dict = {}
    for given in dicts:
        _update(merged, given, "new", canonical=False)
    return merged


def update_defaults(new: Mapping, config: dict | None = None, defaults: list = defaults) -> None:
    """Registers a library's default settings ``new``, as dask's ``update_defaults``: they join
    ``defaults`` (which ``refresh`` applies again under the files and the environment) and fill in
    ``config`` (belated's configuration unless given). A value already there stays, unless it is the
    default registered before, which the new default replaces.

    >>> from belated import config
    >>> settings, registered = {}, []
    >>> config.update_defaults({"my-library": {"size": 1}}, config=settings, defaults=registered)
    >>> settings["my-library"]["size"] = 5  # the user's setting...
    >>> config.update_defaults({"my-library": {"size": 2, "depth": 3}}, config=settings, defaults=registered)
    >>> settings  # ...is kept, a new default is added
    {'my-library': {'size': 5, 'depth': 3}}
    """
    registered = merge(*defaults)
    defaults.append(new)
    update(global_config if config is None else config, new, priority="new-defaults", defaults=registered)


def pop(key: str, default=_missing, config: dict | None = None):
    """Removes ``key`` (dots for nested sections) and returns its value, as dask's ``pop``; ``default``
    if it is not there, else the ``KeyError`` (or ``TypeError`` where a section is a plain value) that
    dask raises. ``config`` is a dict to take it from instead of belated's configuration; dask's own
    configuration, which ``get`` reads where belated's sets nothing, is left alone.

    >>> from belated import config
    >>> settings = {"array": {"chunk_size": "64MiB"}}
    >>> config.pop("array.chunk-size", config=settings), settings
    ('64MiB', {'array': {}})
    """
    given = global_config if config is None else config
    with _lock if given is global_config else contextlib.nullcontext():
        section, _, last = key.rpartition(".")
        try:
            node = _get_in(given, section, _missing) if section else given
            value = node.pop(_spelled_as_in(node, last))
        except (TypeError, IndexError, KeyError):
            if default is _missing:
                raise
            return default
        if given is global_config:
            _config_changed()
    return value


def expand_environment_variables(config):
    """``config`` with ``$NAME`` and ``${NAME}`` in its strings replaced by environment variables, in
    nested dicts, lists, tuples and sets too, as dask's function of that name.

    >>> import os
    >>> from belated import config
    >>> expanded = config.expand_environment_variables({"paths": ["$HOME/data", 3]})
    >>> expanded == {"paths": [os.environ["HOME"] + "/data", 3]}
    True
    """
    if isinstance(config, Mapping):
        return {key: expand_environment_variables(value) for key, value in config.items()}
    if isinstance(config, str):
        return os.path.expandvars(config)
    if isinstance(config, (list, tuple, builtins.set)):
        return type(config)(expand_environment_variables(value) for value in config)
    return config


def serialize(data) -> str:
    """``data`` (JSON-serializable) as text safe for an environment variable, as dask's ``serialize``;
    ``deserialize`` reads it back, and so does dask's.

    >>> from belated import config
    >>> config.deserialize(config.serialize({"a": [1, 2]}))
    {'a': [1, 2]}
    """
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode()


def deserialize(data: str):
    """What ``serialize`` (belated's or dask's) wrote."""
    return json.loads(base64.urlsafe_b64decode(data.encode()).decode())


def collect_yaml(paths, *, return_paths: bool = False) -> Iterator:
    """The settings of each file in ``paths``, one dict a file, as dask's ``collect_yaml`` yields
    them (``merge(*collect_yaml(paths))`` is them all, later files winning): YAML (or JSON) files,
    and directories of ``*.yaml``, ``*.yml`` and ``*.json`` files (in any case) read in name order.
    Paths that do not exist or cannot be read, and empty files, are skipped, as dask skips them.
    With ``return_paths``, each dict comes after its file's path (a ``pathlib.Path``).

    >>> import pathlib, tempfile
    >>> from belated import config
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "a.yaml").write_text("x: 1"), (folder / "b.yaml").write_text("x: 2")
    >>> list(config.collect_yaml([folder])), config.merge(*config.collect_yaml([folder]))
    ([{'x': 1}, {'x': 2}], {'x': 2})
    """
    for file in _files(paths):
        try:
            with open(file) as f:
                settings = yaml.safe_load(f)
        except OSError:  # a file we may not read (or a directory named as one), as dask skips it
            continue
        except Exception as error:
            raise ValueError(f"belated config file {file} is not valid YAML: {error}") from None
        if settings is None:  # an empty file
            continue
        if not isinstance(settings, Mapping):
            kind = type(settings).__name__
            raise ValueError(f"belated config file {file} must hold a mapping of keys to values, not {kind}")
        yield (pathlib.Path(file), settings) if return_paths else settings


def _files(paths) -> list:
    """The configuration files ``paths`` name, in the order they are read."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            try:
                names = os.listdir(path)
            except OSError:  # a directory we may not read, as dask skips it
                continue
            files += sorted(
                os.path.join(path, name)
                for name in names
                if os.path.splitext(name)[1].lower() in (".yaml", ".yml", ".json")
            )
        elif os.path.exists(path):
            files.append(path)
    return files


# YAML's spellings, which a variable may use where Python's are expected, as dask reads them.
_YAML_WORDS = {"none": None, "null": None, "false": False, "true": True}


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        return _YAML_WORDS.get(text.lower(), text)


def collect_env(env: Mapping | None = None) -> dict:
    """The settings in ``BELATED_*`` environment variables (``env``, default ``os.environ``), read in
    order as dask reads ``DASK_*``: keys keep their underscores, a variable naming a section
    (``BELATED_X``) replaces what earlier ones set inside it, and one reaching into a plain value an
    earlier one set (``BELATED_X__Y`` after ``BELATED_X``) is a ``TypeError``.

    >>> from belated import config
    >>> config.collect_env({"BELATED_NUM_WORKERS": "8", "BELATED_A__B_C": "x", "HOME": "/root"})
    {'num_workers': 8, 'a': {'b_c': 'x'}}
    """
    env = os.environ if env is None else env
    settings: dict = {}
    for name, text in env.items():
        if not name.startswith(_ENV_PREFIX) or name == _CONFIG_VARIABLE:
            continue
        key = name[len(_ENV_PREFIX) :].lower().replace("__", ".")
        try:
            set({key: _literal(text)}, config=settings)
        except TypeError as error:
            raise TypeError(f"environment variable {name}: {error}") from None
    return settings


def _nest(path, value):
    """``value`` at ``path`` in new dicts: ``_nest(["a", "b"], 1)`` is ``{"a": {"b": 1}}``."""
    for part in reversed(path):
        value = {part: value}
    return value


def default_paths(env: Mapping | None = None) -> list:
    """Where configuration files are read from: ``~/.config/belated``, then ``$BELATED_CONFIG``."""
    env = os.environ if env is None else env
    paths = [os.path.join(os.path.expanduser("~"), ".config", "belated")]
    if env.get(_CONFIG_VARIABLE):
        paths.append(env[_CONFIG_VARIABLE])
    return paths


def collect(paths=None, env: Mapping | None = None) -> dict:
    """Every setting in the files (``paths``, default ``default_paths()``) and then the environment."""
    sources = [*collect_yaml(default_paths(env) if paths is None else paths), collect_env(env)]
    # Merged from the last, as dask merges them: a key keeps the spelling the source that wins gives it.
    settings: dict = {}
    for source in reversed(sources):
        _update(settings, source, "old", canonical=False)
    return settings


def refresh(
    config: dict | None = None, defaults: list = defaults, paths=None, env: Mapping | None = None
) -> None:
    """Reads the files and the environment again, replacing everything in ``config`` (belated's
    configuration unless given), including values given to ``set`` (which are also undone in
    ``dask.config``), as dask's ``refresh``: first the ``defaults`` libraries registered, then what
    ``collect(paths, env)`` reads over them."""
    settings = collect(paths, env)
    if config is not None and config is not global_config:
        _refill(config, defaults, settings, canonical=False)
        return
    with _lock:
        while _in_dask:
            _in_dask.pop()._leave_dask(None, None, None)
        _refill(global_config, defaults, settings, canonical=True)
        _config_changed()


def _refill(given: dict, defaults: list, settings: Mapping, canonical: bool) -> None:
    """Replaces everything in ``given`` by the ``defaults`` registered, then ``settings`` over them."""
    given.clear()
    for registered in defaults:
        _update(given, registered, "old", canonical=canonical)
    _update(given, settings, "new", canonical=canonical)


class set:  # named as dask.config.set, which users call
    """Set configuration values, from a mapping (dots for nested keys) and/or keyword arguments (``__``
    for nested keys).

    Used as a context manager, the previous values come back on exit; otherwise the change stays. As in
    dask, ``config`` is a dict to set the values in instead (its keys keep their spelling, hyphens or
    underscores), under ``lock`` if one is given.
    """

    def __init__(self, arg: Mapping | None = None, config: dict | None = None, lock=None, **kwargs):
        updates = {**(arg or {}), **{key.replace("__", "."): value for key, value in kwargs.items()}}
        self._previous: list = []
        self._given = config
        self._given_lock = lock or contextlib.nullcontext()
        self._dask = None
        try:
            if config is not None:
                with self._given_lock:
                    for key, value in updates.items():
                        self._assign_given(config, key.split("."), value)
                return
            with _lock:
                for key, value in updates.items():
                    self._assign(_path(key), value)
                _config_changed()
        except BaseException:
            # A key refused (a plain value where it reaches into a section) leaves nothing of the call
            # set, where dask's keeps the keys before it.
            self.__exit__(None, None, None)
            raise
        self._dask = _set_in_dask(updates)
        if self._dask is not None:
            with _lock:
                _in_dask.append(self)

    def _leave_dask(self, *exc):
        if self._dask is not None:
            self._dask.__exit__(*exc)
            self._dask = None

    def _assign(self, path: tuple, value) -> None:
        """Puts ``value`` at ``path``, remembering what was at the outermost level it changes."""
        node = config
        for depth, part in enumerate(path):
            _refuse_value_as_section(node, part, path, depth)
            if depth == len(path) - 1 or not isinstance(node.get(part), dict):
                self._previous.append((path[: depth + 1], node.get(part, _missing)))
                node[part] = _nest(path[depth + 1 :], value) if depth < len(path) - 1 else value
                return
            node = node[part]

    def _assign_given(self, given: dict, keys: list, value) -> None:
        """Puts ``value`` at ``keys`` in ``given``, remembering what was at the outermost level it
        changes, as ``_assign`` does in belated's configuration."""
        node = given
        path: tuple[str, ...] = ()
        for depth, part in enumerate(keys):
            part = _spelled_as_in(node, part)
            path = (*path, part)
            _refuse_value_as_section(node, part, keys, depth)
            if depth == len(keys) - 1 or not isinstance(node.get(part), dict):
                self._previous.append((path, node.get(part, _missing)))
                node[part] = _nest(keys[depth + 1 :], value) if depth < len(keys) - 1 else value
                return
            node = node[part]

    def __enter__(self):
        # As dask's: the configuration changed, for code that reads it in the block.
        return global_config if self._given is None else self._given

    def __exit__(self, *exc):
        if self._given is not None:
            with self._given_lock:
                for path, previous in reversed(self._previous):
                    node = self._given
                    for part in path[:-1]:
                        node = node.get(part) if isinstance(node, dict) else None
                    _put_back(node, path[-1], previous)
            return
        with _lock:
            if self in _in_dask:
                _in_dask.remove(self)
        self._leave_dask(*exc)
        with _lock:
            for path, previous in reversed(self._previous):
                # belated's own section only: where it went meanwhile (refreshed, or an outer set
                # ended first), dask's section of that name is not ours to change.
                node = _own(".".join(path[:-1]), None) if len(path) > 1 else config
                _put_back(node, path[-1], previous)
            _config_changed()


def _refuse_value_as_section(node: dict, part: str, keys, depth: int) -> None:
    """The ``TypeError`` dask raises when a key reaches into a plain value as into a section
    (``set({"scheduler.x": 1})`` where ``scheduler`` is ``"threads"``)."""
    if depth < len(keys) - 1 and part in node and not isinstance(node[part], dict):
        section = ".".join(keys[: depth + 1])
        raise TypeError(
            f"cannot set {'.'.join(keys)!r}: {section!r} is {node[part]!r}, not a section of settings"
        )


def _put_back(node, key, previous):
    """Gives ``key`` of the section ``node`` its ``previous`` value again, or removes it where it had
    none; a section that is gone meanwhile (or is no longer a dict) is left alone."""
    if not isinstance(node, dict):
        return
    if previous is _missing:
        node.pop(key, None)
    else:
        node[key] = previous


def _set_in_dask(updates: Mapping):
    """The same ``set`` in ``dask.config`` when the program has loaded dask, as its context manager: code
    written for dask, run with ``import belated as dask``, sets keys that dask itself reads
    (``array.chunk-size``, ``num_workers`` of dask's own schedulers, optimizations...). A Client named
    as the scheduler is not copied: the Client tells dask itself, and only while it is open."""
    dask_config = sys.modules.get("dask.config")
    if dask_config is None:
        return None
    client = sys.modules.get("belated._client")
    if client is not None:
        updates = {
            key: value
            for key, value in updates.items()
            if not (canonical_name(key) == "scheduler" and isinstance(value, client.Client))
        }
    return dask_config.set(updates) if updates else None


refresh()
