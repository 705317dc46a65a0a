"""Configuration, as ``dask.config``: ``set`` works globally and as a context manager.

Keys belated reads: ``scheduler`` ("threads" or "sync"), ``num_workers`` and ``delayed_pure``. Other keys
are stored and returned by ``get`` so that dask code setting them keeps working. Hyphens and underscores
in keys are interchangeable, as in dask.

>>> import belated
>>> with belated.config.set(scheduler="sync"):
...     belated.config.get("scheduler")
'sync'
"""

import threading

from belated import _belated

_settings: dict = {}
_lock = threading.Lock()
_missing = object()


def _canonical(key: str) -> str:
    return key.replace("_", "-")


def _apply(key: str, value) -> None:
    if value is _missing:
        _settings.pop(key, None)
    else:
        _settings[key] = value
    if key == "delayed-pure":
        _belated.set_default_pure(bool(_settings.get(key, False)))


def get(key: str, default=_missing):
    """The value of ``key``; ``default`` if unset, else ``KeyError``."""
    try:
        return _settings[_canonical(key)]
    except KeyError:
        if default is _missing:
            raise KeyError(key) from None
        return default


class set:  # named as dask.config.set, which users call
    """Set configuration values, from a mapping and/or keyword arguments.

    Used as a context manager, the previous values come back on exit; otherwise the change stays.
    """

    def __init__(self, arg=None, **kwargs):
        updates = {**(arg or {}), **kwargs}
        with _lock:
            self._previous = {}
            for key, value in updates.items():
                key = _canonical(key)
                self._previous.setdefault(key, _settings.get(key, _missing))
                _apply(key, value)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        with _lock:
            for key, value in self._previous.items():
                _apply(key, value)
