"""One root error and a few leaves, so callers can catch exactly what they can handle."""

from __future__ import annotations


class MemcacheError(Exception):
    """Root of every error memcache raises on purpose."""


class InvalidRequestError(MemcacheError, ValueError):
    """The request cannot be cached or answered as given; nothing was read or written."""


class ConfigError(MemcacheError, ValueError):
    """A constructor argument or configuration file is wrong."""

    @classmethod
    def missing_extra(cls, extra: str, module: str) -> ConfigError:
        return cls(f'{module} is not installed; install it with: pip install "memcache[{extra}]"')


class EmbeddingError(MemcacheError):
    """The embedding model could not be loaded or failed to encode."""


class StoreError(MemcacheError):
    """The store (SQLite/PostgreSQL) could not be opened, read or written."""


class EscalationError(MemcacheError):
    """The strong model call failed or returned an answer that did not pass verification."""


class SnapshotError(MemcacheError, ValueError):
    """An index snapshot is not one, belongs elsewhere, or is damaged; a start-up ignores it and
    rebuilds the index from the store."""
