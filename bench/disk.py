"""Storage on disk (SQLite in a temporary file) for the benchmark streams that do not fit in memory.

A 10M-change stream makes ~9M ledger items and as many (audience, user) states for the minimum: tens of GB
as Python objects. These keep them in SQLite instead (no journal, no fsync: a benchmark's scratch space),
with the same few operations the in-memory versions offer. A DiskDict's values are deflated with the first
value it stored as the preset dictionary (the minimum's per-pair records: 363 bytes pickled, ~100 deflated),
so a 10M stream's stores fit in /dev/shm beside another stream.
"""

from __future__ import annotations

import pickle
import sqlite3
import tempfile
import zlib
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

CACHE_KIB = 262_144  # SQLite's page cache: 256 MB per store
LEVEL = 1  # zlib's fastest: most of the cost is setting up the preset dictionary, not the level


def _connect(directory: str, name: str) -> sqlite3.Connection:
    connection = sqlite3.connect(Path(directory) / f"{name}.sqlite", check_same_thread=False)
    for pragma in ("journal_mode=OFF", "synchronous=OFF", f"cache_size=-{CACHE_KIB}", "temp_store=MEMORY"):
        connection.execute(f"PRAGMA {pragma}")
    return connection


def _key(key: tuple[str, ...]) -> str:
    return "\x1f".join(key)


def _unkey(stored: str) -> tuple[str, ...]:
    return tuple(stored.split("\x1f"))


class DiskDict(MutableMapping[tuple[str, ...], Any]):
    """A dict of tuple-of-string keys to picklable values, on disk. Values come back as copies: store a
    value again after changing it."""

    def __init__(self) -> None:
        self._directory = tempfile.TemporaryDirectory(prefix="bench-disk-")
        self._db = _connect(self._directory.name, "dict")
        self._db.execute("CREATE TABLE kv (k TEXT PRIMARY KEY, v BLOB) WITHOUT ROWID")
        self._zdict = b""  # the first value stored, pickled: what the others resemble

    def _dumps(self, value: Any) -> bytes:
        pickled = pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
        self._zdict = self._zdict or pickled
        deflate = zlib.compressobj(LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS, zdict=self._zdict)
        return deflate.compress(pickled) + deflate.flush()

    def _loads(self, stored: bytes) -> Any:
        inflate = zlib.decompressobj(-zlib.MAX_WBITS, zdict=self._zdict)
        return pickle.loads(inflate.decompress(stored))  # noqa: S301 - only what this store pickled itself

    def __getitem__(self, key: tuple[str, ...]) -> Any:
        row = self._db.execute("SELECT v FROM kv WHERE k = ?", (_key(key),)).fetchone()
        if row is None:
            raise KeyError(key)
        return self._loads(row[0])

    def get(self, key: tuple[str, ...], default: Any = None) -> Any:
        """The value, or `default` (one SELECT, no exception)."""
        row = self._db.execute("SELECT v FROM kv WHERE k = ?", (_key(key),)).fetchone()
        return default if row is None else self._loads(row[0])

    def __setitem__(self, key: tuple[str, ...], value: Any) -> None:
        self._db.execute("INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)", (_key(key), self._dumps(value)))

    def __delitem__(self, key: tuple[str, ...]) -> None:
        if self._db.execute("DELETE FROM kv WHERE k = ?", (_key(key),)).rowcount == 0:
            raise KeyError(key)

    def __iter__(self) -> Iterator[tuple[str, ...]]:
        for (key,) in self._db.execute("SELECT k FROM kv ORDER BY k").fetchall():
            yield _unkey(key)

    def items(self) -> Iterator[tuple[tuple[str, ...], Any]]:  # type: ignore[override]
        """Every (key, value), in one scan of the table (not a SELECT per key)."""
        for key, value in self._db.execute("SELECT k, v FROM kv"):
            yield _unkey(key), self._loads(value)

    def __len__(self) -> int:
        count: int = self._db.execute("SELECT COUNT(*) FROM kv").fetchone()[0]
        return count


class DiskItems:
    """Items by (partition key, sort key) as bytes, on disk; a partition reads back in sort-key order."""

    def __init__(self) -> None:
        self._directory = tempfile.TemporaryDirectory(prefix="bench-disk-")
        self._db = _connect(self._directory.name, "items")
        self._db.execute("CREATE TABLE items (pk TEXT, sk TEXT, v BLOB, PRIMARY KEY (pk, sk)) WITHOUT ROWID")

    def get(self, pk: str, sk: str) -> bytes | None:
        """One item."""
        row = self._db.execute("SELECT v FROM items WHERE pk = ? AND sk = ?", (pk, sk)).fetchone()
        return None if row is None else bytes(row[0])

    def put(self, pk: str, sk: str, value: bytes) -> None:
        """Store (or replace) one item."""
        self._db.execute("INSERT OR REPLACE INTO items (pk, sk, v) VALUES (?, ?, ?)", (pk, sk, value))

    def pop(self, pk: str, sk: str) -> bytes | None:
        """Remove one item; it, if it was there."""
        found = self.get(pk, sk)
        if found is not None:
            self._db.execute("DELETE FROM items WHERE pk = ? AND sk = ?", (pk, sk))
        return found

    def partition(self, pk: str) -> list[tuple[str, bytes]]:
        """Every item of a partition, by sort key."""
        rows = self._db.execute("SELECT sk, v FROM items WHERE pk = ? ORDER BY sk", (pk,)).fetchall()
        return [(sk, bytes(v)) for sk, v in rows]


class MemoryItems:
    """The same as DiskItems, in a dict (every stream up to 1M changes)."""

    def __init__(self) -> None:
        self._items: dict[str, dict[str, bytes]] = {}

    def get(self, pk: str, sk: str) -> bytes | None:
        """One item."""
        return self._items.get(pk, {}).get(sk)

    def put(self, pk: str, sk: str, value: bytes) -> None:
        """Store (or replace) one item."""
        self._items.setdefault(pk, {})[sk] = value

    def pop(self, pk: str, sk: str) -> bytes | None:
        """Remove one item; it, if it was there."""
        return self._items.get(pk, {}).pop(sk, None)

    def partition(self, pk: str) -> list[tuple[str, bytes]]:
        """Every item of a partition, by sort key."""
        return sorted(self._items.get(pk, {}).items())
