"""``import belated.array`` (and ``from belated.dataframe import ...``) as dask's own submodules.

Attribute access (``belated.array``) goes through the package's ``__getattr__``; an import statement
goes through the import system instead, which looks for a file in belated's directory and finds none.
This finder answers those imports with dask's module itself, so ``belated.array is dask.array`` and
its classes are dask's (a second copy loaded under another name would make ``isinstance`` lie).
"""

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType

PACKAGE = "belated"


class DaskSubmodules(importlib.abc.MetaPathFinder):
    """Finds ``belated.<name>[.<more>]`` as ``dask.<name>[.<more>]`` where belated has no such module.

    ``dask_submodules`` are the first-level names that exist in dask; without dask installed, importing
    one of them raises an ImportError that names the extra to install.
    """

    def __init__(self, own: frozenset[str], dask_submodules: frozenset[str]) -> None:
        self.own = own
        self.dask_submodules = dask_submodules

    def find_spec(
        self,
        fullname: str,
        path: object = None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        package, _, rest = fullname.partition(".")
        first = rest.partition(".")[0]
        if package != PACKAGE or not rest or first.startswith("_") or first in self.own:
            return None
        dask_name = f"dask.{rest}"
        try:
            found = importlib.util.find_spec(dask_name)
        except ModuleNotFoundError as error:
            if error.name != "dask" or first not in self.dask_submodules:
                return None
            raise ModuleNotFoundError(
                f"belated.{first} is dask.{first}, and dask is not installed: pip install 'belated[dask]'",
                name=fullname,
            ) from None
        if found is None:
            return None
        return importlib.util.spec_from_loader(fullname, Alias(dask_name))


class Alias(importlib.abc.Loader):
    """Puts dask's module in ``sys.modules`` under belated's name.

    The import system re-reads ``sys.modules`` after ``exec_module``, so the importer gets dask's
    module, whose own ``__spec__`` and ``__name__`` stay dask's; the placeholder it created is dropped.
    """

    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        sys.modules[module.__name__] = importlib.import_module(self.target)


def install(own: frozenset[str], dask_submodules: frozenset[str]) -> None:
    # First in line: once ``belated.array`` is dask's package, the path finder would otherwise load
    # ``belated.array.core`` from dask's directory a second time, under belated's name.
    if not any(isinstance(finder, DaskSubmodules) for finder in sys.meta_path):
        sys.meta_path.insert(0, DaskSubmodules(own, dask_submodules))
