"""``progress``: a bar of how many of some futures are done, as distributed's.

In a terminal it is a text line redrawn in place until all are done (``progress`` returns then, as
distributed's does). In Jupyter it is an HTML bar per function, drawn through an ``IPython.display``
handle and updated in place from a background thread, so the cell returns at once; ipywidgets is not
needed.
"""

import html
import sys
import threading
import time

from belated import _belated
from belated._futures import Future, futures_in

_WIDTH = 40


def progress(*futures, notebook=None, multi=True, complete=True, interval=0.1, file=None):
    """Shows the progress of ``futures`` (Futures, or lists and dicts of them; a ``Delayed`` is
    started on the current Client and its future shown). ``multi``: in Jupyter, a bar per function.
    ``complete=False`` leaves no bar once all are done. Returns the bar's object in Jupyter, else None
    once all are done."""
    tracked = _futures_of(futures)
    if notebook is None:
        notebook = _in_notebook()
    if notebook:
        bar = HtmlProgress(tracked, multi=multi, complete=complete, interval=interval)
        bar.start()
        return bar
    TextProgress(tracked, complete=complete, interval=interval, file=file).run()
    return None


def _futures_of(objs):
    from belated._futures import get_client

    found = []
    for obj in objs:
        if isinstance(obj, _belated.Delayed):
            found.append(get_client().compute(obj))
        elif isinstance(obj, Future):
            found.append(obj)
        else:
            inner = futures_in(obj)
            if not inner and not isinstance(obj, (list, tuple, set, dict)):
                raise TypeError(f"progress() takes Futures or Delayed objects, got {obj!r}")
            found.extend(inner)
    return found


def _in_notebook():
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    ipython = shell.get_ipython()
    return ipython is not None and type(ipython).__name__ == "ZMQInteractiveShell"


def _prefix(key):
    """The function part of a key: ``inc-3f2a…``, ``inc-1b4e28ba-2fa1-…`` and ``("inc-3f2a", 0)``
    are ``inc``; ``read-csv-3f2a…`` is ``read-csv``."""
    key = key[0] if isinstance(key, tuple) else str(key)
    words = key.split("-")
    kept = [words[0]]
    for word in words[1:]:
        if not word.isalpha() or all(c in "abcdef" for c in word.lower()):
            break  # a token or uuid part
        kept.append(word)
    return "-".join(kept)


def _counts(futures):
    """Done count per function prefix, with totals: ``{prefix: (done, total)}``, in first-seen order."""
    counts = {}
    for future in futures:
        done, total = counts.get(_prefix(future.key), (0, 0))
        counts[_prefix(future.key)] = (done + future.done(), total + 1)
    return counts


def text_bar(done, total, elapsed):
    """``[####      ] |  40% Completed |  1.2s``, dask's text bar."""
    fraction = done / total if total else 1.0
    filled = int(fraction * _WIDTH)
    return f"[{'#' * filled}{' ' * (_WIDTH - filled)}] | {fraction:4.0%} Completed | {elapsed:4.1f}s"


class TextProgress:
    def __init__(self, futures, complete=True, interval=0.1, file=None):
        self.futures, self.complete, self.interval = futures, complete, interval
        self.file = file if file is not None else sys.stdout

    def _draw(self, start):
        done = sum(future.done() for future in self.futures)
        self.file.write("\r" + text_bar(done, len(self.futures), time.monotonic() - start))
        self.file.flush()
        return done == len(self.futures)

    def run(self):
        start = time.monotonic()
        while not self._draw(start):
            time.sleep(self.interval)
        if self.complete:
            self.file.write("\n")
        else:
            self.file.write("\r" + " " * (_WIDTH + 30) + "\r")
        self.file.flush()


def html_bars(counts, elapsed):
    rows = []
    for name, (done, total) in counts.items():
        percent = 100 * done / total if total else 100
        color = "#2ca02c" if done == total else "#1f77b4"
        rows.append(
            "<div style='display:flex;align-items:center;gap:8px;font-family:monospace'>"
            f"<span style='width:12em;overflow:hidden;text-overflow:ellipsis'>{html.escape(name)}</span>"
            "<div style='width:300px;height:12px;background:#eee;border:1px solid #ccc'>"
            f"<div style='width:{percent:.1f}%;height:100%;background:{color}'></div></div>"
            f"<span>{done} / {total}</span></div>"
        )
    return f"<div>{''.join(rows)}<div style='font-family:monospace'>{elapsed:.1f} s</div></div>"


class HtmlProgress:
    """Jupyter bars, one per function (``multi``) or one for all, redrawn in place."""

    def __init__(self, futures, multi=True, complete=True, interval=0.1):
        self.futures, self.multi, self.complete, self.interval = futures, multi, complete, interval
        self._handle = None
        self._thread = None

    def _html(self, start):
        counts = _counts(self.futures)
        if not self.multi:
            done = sum(done for done, _ in counts.values())
            counts = {"total": (done, len(self.futures))}
        return html_bars(counts, time.monotonic() - start)

    def start(self):
        from IPython.display import HTML, display

        start = time.monotonic()
        self._handle = display(HTML(self._html(start)), display_id=True)
        self._thread = threading.Thread(
            target=self._loop, args=(start, HTML), daemon=True, name="belated-progress"
        )
        self._thread.start()

    def _loop(self, start, html_type):
        while not all(future.done() for future in self.futures):
            time.sleep(self.interval)
            self._handle.update(html_type(self._html(start)))
        self._handle.update(html_type(self._html(start) if self.complete else ""))

    def join(self, timeout=None):
        """Waits until the bars drew their last state."""
        self._thread.join(timeout)
