"""Sync and async twins written once.

A flow is a generator that yields each call it needs (a zero-argument callable) and is sent
back the result. `run` makes the calls in the caller's thread; `arun` awaits those that return
an awaitable. So `completion` and `acompletion`, or the decorator's two wrappers, share one
flow, and each twin does only its own I/O.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Generator
from typing import Any, TypeVar

T = TypeVar("T")
Flow = Generator[Callable[[], Any], Any, T]


def run(flow: Flow[T]) -> T:
    """Drive a flow synchronously."""
    try:
        step = next(flow)
        while True:
            step = flow.send(step())
    except StopIteration as done:
        return done.value


async def arun(flow: Flow[T]) -> T:
    """Drive a flow on the running event loop, awaiting the calls that return awaitables."""
    try:
        step = next(flow)
        while True:
            value = step()
            step = flow.send(await value if inspect.isawaitable(value) else value)
    except StopIteration as done:
        return done.value


def now(fn: Callable[..., T], *args: Any) -> Callable[[], T]:
    """A step that runs `fn(*args)` in the caller's thread."""
    return lambda: fn(*args)
