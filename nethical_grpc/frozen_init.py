"""A quicker ``__init__`` for the frozen, slotted dataclasses made once or more per action.

A frozen dataclass's generated ``__init__`` sets each field by ``object.__setattr__``,
past the class's own ``__setattr__``, which refuses assignment: a global lookup, an
attribute lookup and a generic call a field. :func:`quick_init` gives such a class an
``__init__`` that sets each slot through the slot's own descriptor, held by the function
(on ❈, see docs/performance.md: 331 ns against 563 for five fields). The parameters,
their defaults and default factories, keyword-only fields and ``__post_init__`` are the
dataclass's, and so are assignment (still ``FrozenInstanceError``), equality, hashing,
``repr``, ``dataclasses.replace`` and pickling; the generated ``__init__`` it replaces is
kept as the new one's ``__wrapped__``, which tests compare it with.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: Stands for a parameter not given whose field has a default factory.
_NOT_GIVEN: Any = object()


def quick_init(cls: type[T]) -> type[T]:
    """Give the frozen, slotted dataclass ``cls`` an ``__init__`` setting its slots
    directly (``TypeError`` for any other class, or one with ``init=False`` fields)."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__qualname__}: quick_init takes a frozen, slotted dataclass")
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]  # a dataclass, checked
    if any(not f.init for f in fields):
        raise TypeError(f"{cls.__qualname__}: quick_init takes no init=False fields")
    namespace: dict[str, Any] = {"_NOT_GIVEN": _NOT_GIVEN}
    signature: list[str] = []
    body: list[str] = []
    keyword_only = False
    for i, f in enumerate(fields):
        if f.kw_only and not keyword_only:
            signature.append("*")
            keyword_only = True
        namespace[f"_set{i}"] = cls.__dict__[f.name].__set__
        if f.default is not dataclasses.MISSING:
            namespace[f"_default{i}"] = f.default
            signature.append(f"{f.name}=_default{i}")
        elif f.default_factory is not dataclasses.MISSING:
            namespace[f"_factory{i}"] = f.default_factory
            signature.append(f"{f.name}=_NOT_GIVEN")
            body.append(f"if {f.name} is _NOT_GIVEN: {f.name} = _factory{i}()")
        else:
            signature.append(f.name)
        body.append(f"_set{i}(self, {f.name})")
    if hasattr(cls, "__post_init__"):
        body.append("self.__post_init__()")
    source = f"def __init__(self, {', '.join(signature)}):\n" + "".join(
        f"    {line}\n" for line in body or ["pass"]
    )
    exec(source, namespace)  # names from the dataclass's own fields
    init: Callable[..., None] = namespace["__init__"]
    generated = cls.__dict__["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__wrapped__ = generated  # type: ignore[attr-defined]
    type.__setattr__(cls, "__init__", init)
    return cls
