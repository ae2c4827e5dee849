"""A clock that tests set by hand, for code that takes ``clock: Callable[[], int]``."""

from __future__ import annotations


class Clock:
    """Unix nanoseconds: ``t``, until a test moves it."""

    def __init__(self, t: int) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t
