"""Checks of what a caller passes to `MemCache`: settings, entry ids, decorated functions.

Each raises a typed error that says what to pass instead, before anything is built or written.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from memcache.errors import ConfigError, InvalidRequestError
from memcache.scope import digest

MAX_SECONDS = 100 * 365 * 86_400  # past this an expiry date would not fit a datetime


def cache_settings(database_url, max_query_chars, hindsight_window, max_entries, ttl, sync_interval, verify) -> None:
    """The plain settings of `MemCache`."""
    if database_url is not None and (not isinstance(database_url, str) or not database_url.strip()):
        raise ConfigError("database_url must be a SQLAlchemy URL such as 'sqlite:///memcache.db' (or None for that)")
    count(max_query_chars, "max_query_chars", minimum=1)
    count(hindsight_window, "hindsight_window", minimum=0, hint="0 turns hindsight labels off")
    count(max_entries, "max_entries", minimum=1, hint="or None for no limit", optional=True)
    seconds(ttl, "ttl", allow_zero=False, hint="or None for no expiry")
    seconds(sync_interval, "sync_interval", allow_zero=True, hint="or None to turn syncing off")
    if verify is not None and not callable(verify):
        raise ConfigError("verify must be a callable verify(query, answer) -> bool")


def seconds(value: Any, name: str, *, allow_zero: bool, hint: str) -> None:
    """A duration in seconds: a finite number, > 0 (or >= 0), under a century; None passes."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} is in seconds and must be a finite number ({hint})")
    if value < 0 or (value == 0 and not allow_zero) or value > MAX_SECONDS:
        low = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name} is in seconds and must be {low} and at most {MAX_SECONDS:,} ({hint})")


def count(value: Any, name: str, *, minimum: int, hint: str = "", optional: bool = False) -> None:
    """A whole number >= `minimum` (None passes when `optional`)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be a whole number >= {minimum}" + (f" ({hint})" if hint else ""))


def entry_id(value: Any) -> int:
    """An entry id as a caller passes it: a positive 64-bit integer."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**63:
        raise InvalidRequestError(f"an entry id is a positive 64-bit integer, got {value!r}")
    return value


def function_name(fn: Callable) -> str:
    """The scope name of a decorated function: `module.qualname`, where that names it alone.

    Functions defined inside another function add their defaults, by value: siblings made by one
    factory differ only there. A closure, a lambda or a partial has nothing stable to add (what
    it captured is not part of its name), so it needs an explicit name.
    """
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(qualname, str) or "<lambda>" in qualname or getattr(fn, "__closure__", None):
        raise ConfigError(
            f"{qualname or fn!r} has no name that tells it apart from its siblings across restarts (a closure, "
            "a lambda or a partial); decorate it with @cache.cached(model='a-name-of-its-own')"
        )
    name = f"{fn.__module__}.{qualname}"
    if "<locals>" in qualname:
        try:
            name += "#" + digest([fn.__defaults__, fn.__kwdefaults__], what=f"the defaults of {qualname}")
        except InvalidRequestError as exc:
            raise ConfigError(f"{exc}; or decorate it with @cache.cached(model='a-name-of-its-own')") from exc
    return name
