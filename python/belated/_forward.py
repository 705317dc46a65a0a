"""Attributes of ``belated.Delayed`` that are the class's own on the class and the wrapped function's
on a ``delayed(func)`` object, as :func:`functools.wraps` would make them.

A getter would not do for these: Python reads a class's ``__module__`` straight from the class dict
(``repr``, ``pickle`` and ``help`` then get a getter object, not a string), and a ``__doc__`` getter
hides the class docstring from ``help(belated.Delayed)``. So each is a string (what the class sees)
that is also a descriptor (what instances see). A ``__signature__`` getter is a descriptor object when
read on the class, which ``inspect.signature(belated.Delayed)`` refuses: that one is None there.
"""

import inspect


class Forwarded(str):
    """The string ``value`` on the class; on an instance, its wrapped function's ``name`` attribute."""

    name: str

    def __new__(cls, value: str, name: str) -> "Forwarded":
        forwarded = super().__new__(cls, value)
        forwarded.name = name
        return forwarded

    def __reduce__(self) -> tuple[type[str], tuple[str]]:
        # Pickling the class pickles its module's name: as the plain string it stands for.
        return str, (str(self),)

    def __get__(self, obj: object, owner: type | None = None) -> object:
        # A getter raising AttributeError tells the class and a delayed value other than a function.
        wrapped = None if obj is None else getattr(obj, "__wrapped__", None)
        if wrapped is None:
            return str(self)
        return getattr(wrapped, self.name, str(self))


class ForwardedSignature:
    """None on the class (``inspect.signature`` then reads the constructor's text signature); on a
    ``delayed(func)`` object, the signature of ``func``."""

    def __get__(self, obj: object, owner: type | None = None) -> inspect.Signature | None:
        if obj is None:
            return None
        wrapped = getattr(obj, "__wrapped__", None)
        if wrapped is None:
            raise AttributeError("__signature__")
        return inspect.signature(wrapped)
