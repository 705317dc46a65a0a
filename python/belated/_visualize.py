"""``visualize()``: pictures of task graphs, laid out and drawn by the engine, so no Graphviz is needed."""

import os
import warnings

from belated import _belated


class Picture:
    """A drawing of a task graph (``data`` is SVG or DOT text, or PNG bytes); Jupyter shows it inline."""

    def __init__(self, data, format):
        self.data = data
        self.format = format

    def _repr_svg_(self):
        return self.data if self.format == "svg" else None

    def _repr_png_(self):
        return self.data if self.format == "png" else None

    def __repr__(self):
        unit = "bytes" if self.format == "png" else "characters"
        return f"<belated.Picture {self.format}, {len(self.data)} {unit}>"


def visualize(
    *args, filename="mydask", format=None, rankdir="TB", collapse_above=None, traverse=True, **kwargs
):
    """Draws the task graph behind ``Delayed`` objects, as dask does, with no Graphviz installed.

    A circle per task labelled by its function, a box per result, arrows in data-flow direction,
    top to bottom (``rankdir="LR"``: left to right). The file's extension picks the format: ``.svg``,
    ``.png`` or ``.dot``; a name without one gets ``format`` (default ``png``) appended, as in dask.
    ``filename=None`` writes nothing. Returns a :class:`Picture`, which Jupyter displays.

    Graphs of more than 200 tasks (``collapse_above``) draw each group of interchangeable sibling tasks
    as one node with a count, and say so in a warning. Other keyword arguments (dask's Graphviz
    options) are accepted and ignored.

    Parameters
    ----------
    *args
        ``Delayed`` objects, or containers holding them.
    filename : str or os.PathLike, optional
        Where to write the picture; ``None`` writes nothing.
    format : str, optional
        ``"svg"``, ``"png"`` or ``"dot"``, when ``filename`` has no extension.
    rankdir : str
        ``"TB"`` (top to bottom) or ``"LR"`` (left to right).
    collapse_above : int, optional
        The number of tasks above which sibling tasks are drawn as one node (default 200).
    traverse : bool
        Whether to look for ``Delayed`` objects inside containers.
    **kwargs
        dask's Graphviz options, accepted and ignored.

    Returns
    -------
    Picture
        The drawing, which Jupyter displays inline.

    Raises
    ------
    ValueError
        For a format or ``rankdir`` belated can't draw.
    OSError
        When ``filename`` can't be written.

    Examples
    --------
    >>> from belated import delayed
    >>> total = delayed(sum)([delayed(abs)(-1), delayed(abs)(-2)])
    >>> total.visualize(filename=None, format="svg").data.count('class="node task"')
    3
    """
    if filename is not None:
        root, extension = os.path.splitext(os.fspath(filename))
        if extension:
            format = extension[1:]
        else:
            format = format or "png"
            filename = f"{root}.{format}"
    format = (format or "svg").lower()
    data, collapsed = _belated.draw(args, format, rankdir, collapse_above, traverse)
    if collapsed:
        groups = ", ".join(f"{count} '{label}' tasks" for label, count in collapsed)
        warnings.warn(
            f"the graph is large, so repeated sibling tasks are drawn as one node each ({groups}); "
            "pass collapse_above= a larger number to draw every task",
            stacklevel=2,
        )
    if filename is not None:
        mode = "wb" if isinstance(data, bytes) else "w"
        with open(filename, mode) as out:
            out.write(data)
    return Picture(data, format)
