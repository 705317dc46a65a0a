"""``import belated.array`` (and ``from belated.dataframe import ...``) as dask's own submodules.

Attribute access (``belated.array``) goes through the package's ``__getattr__``; an import statement
goes through the import system instead, which looks for a file in belated's directory and finds none.
This finder answers those imports with dask's module itself, so ``belated.array is dask.array`` and
its classes are dask's (a second copy loaded under another name would make ``isinstance`` lie).

``delayed`` and ``tokenize`` are both a module and a function in dask, and only a function in belated.
Importing dask's module there would make the import system set it as belated's attribute, replacing
belated's ``delayed`` for every user of the package, and ``from belated.delayed import delayed`` would
be dask's. Those names are :class:`Overlay` modules in ``sys.modules`` instead.
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


class Overlay(ModuleType):
    """``belated.<name>`` as a module where belated's attribute of that name is a function.

    An import that finds the module in ``sys.modules`` sets no attribute on the package, so
    ``belated.delayed`` stays the function (as ``dask.delayed`` stays dask's). The names given are
    belated's own; any other is read from dask's module of that name.
    """

    def __init__(self, name: str, own: dict[str, object]) -> None:
        super().__init__(f"{PACKAGE}.{name}")
        self.__spec__ = importlib.machinery.ModuleSpec(self.__name__, None)
        self.__dict__.update(own)

    def __reduce__(self) -> tuple[object, tuple[str]]:
        # By name, as pickle takes a module: a function sent to a worker process by value that reads
        # ``belated.delayed`` carries this module among its globals (cloudpickle finds modules by exact
        # type, and this is a subclass).
        return importlib.import_module, (self.__name__,)

    def __getattr__(self, name: str) -> object:
        dask_name = f"dask.{self.__name__.partition('.')[2]}"
        if name.startswith("__"):
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        try:
            module = importlib.import_module(dask_name)
        except ModuleNotFoundError as error:
            if error.name not in ("dask", dask_name):
                raise
            raise AttributeError(
                f"{self.__name__}.{name} would be {dask_name}.{name}, and dask is not installed: "
                "pip install 'belated[dask]'"
            ) from None
        return getattr(module, name)


def install(
    own: frozenset[str], dask_submodules: frozenset[str], overlays: dict[str, dict[str, object]]
) -> None:
    for name, names in overlays.items():
        sys.modules.setdefault(f"{PACKAGE}.{name}", Overlay(name, names))
    # First in line: once ``belated.array`` is dask's package, the path finder would otherwise load
    # ``belated.array.core`` from dask's directory a second time, under belated's name.
    if not any(isinstance(finder, DaskSubmodules) for finder in sys.meta_path):
        sys.meta_path.insert(0, DaskSubmodules(own, dask_submodules))
