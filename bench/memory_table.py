"""The DynamoDB calls our table code makes, answered from memory and metered as DynamoDB bills them.

moto needs minutes per million changes; the benchmarks that simulate hours of traffic run the real ledger,
outbox and budget code against this instead. One caller at a time: conditions are not evaluated (the
simulation never interleaves two invocations), update expressions are (SET with if_not_exists, ADD, REMOVE).
"""

from __future__ import annotations

import math
import pickle
import re
import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bench.disk import DiskItems, MemoryItems

WRITE_UNIT_BYTES = 1024  # one WRU writes up to 1 KB
READ_UNIT_BYTES = 4096  # one strongly consistent RRU reads up to 4 KB
Item = dict[str, dict[str, Any]]  # DynamoDB's wire format: attribute -> {type: value}
_CLAUSE = re.compile(r"\b(SET|ADD|REMOVE)\b")


def item_bytes(item: Item) -> int:
    """DynamoDB's size of an item: attribute names plus values (S and B by length, N ~1 byte per 2 digits)."""
    size = 0
    for name, value in item.items():
        size += len(name.encode())
        for kind, content in value.items():
            if kind == "S":
                size += len(str(content).encode())
            elif kind == "N":
                size += math.ceil(len(str(content).strip("-").lstrip("0").replace(".", "")) / 2) + 1
            elif kind == "B":
                size += len(content)
            else:  # BOOL, NULL (the code writes nothing else)
                size += 1
    return size


def _load(data: bytes) -> Item:
    item: Item = pickle.loads(data)  # noqa: S301 - only bytes this table pickled itself, in this process
    return item


def _split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current.strip())
    return parts


def _number(value: dict[str, Any]) -> float:
    number = float(value["N"])
    return int(number) if number.is_integer() else number


class InMemoryTable:
    """One table: the calls the ledger, outbox and budget make, each metered (`billed`: calls by operation,
    plus `rru` and `wru` as DynamoDB on-demand bills them)."""

    def __init__(self, on_disk: bool = False) -> None:
        # (pk, sk) -> the item pickled: a tenth of the memory of the wire-format dicts; on disk for 10M changes
        # (~9M items)
        self.items: MemoryItems | DiskItems = DiskItems() if on_disk else MemoryItems()
        self.billed: defaultdict[str, float] = defaultdict(float)
        self._lock = threading.Lock()

    @contextmanager
    def unmetered(self) -> Iterator[None]:
        """Calls made inside are not billed (the benchmark's own observations)."""
        saved = defaultdict(float, self.billed)
        yield
        self.billed = saved

    def _bill(self, operation: str, rru: float = 0, wru: int = 0) -> None:
        with self._lock:
            self.billed[operation] += 1
            self.billed["rru"] += rru
            self.billed["wru"] += wru

    def _find(self, key: Item) -> Item | None:
        found = self.items.get(key["pk"]["S"], key["sk"]["S"])
        return None if found is None else _load(found)

    def _store(self, item: Item) -> None:
        self.items.put(item["pk"]["S"], item["sk"]["S"], pickle.dumps(item, pickle.HIGHEST_PROTOCOL))

    def _drop(self, key: Item) -> Item | None:
        gone = self.items.pop(key["pk"]["S"], key["sk"]["S"])
        return None if gone is None else _load(gone)

    def put_item(self, **params: Any) -> dict[str, Any]:
        """PutItem (a consent marker)."""
        self._bill("PutItem", wru=math.ceil(item_bytes(params["Item"]) / WRITE_UNIT_BYTES))
        with self._lock:
            self._store(params["Item"])
        return {}

    def delete_item(self, **params: Any) -> dict[str, Any]:
        """DeleteItem: billed by the size of the item deleted."""
        with self._lock:
            gone = self._drop(params["Key"])
        self._bill("DeleteItem", wru=math.ceil(item_bytes(gone) / WRITE_UNIT_BYTES) if gone else 1)
        return {}

    def update_item(self, **params: Any) -> dict[str, Any]:
        """UpdateItem with SET (`a = :x`, `a = if_not_exists(a, :x)`), ADD (`a :n`) and REMOVE (`a`)."""
        names = params.get("ExpressionAttributeNames", {})
        values = params.get("ExpressionAttributeValues", {})
        expressions = params["UpdateExpression"] + params.get("ConditionExpression", "")
        unused = [name for name in names if name not in expressions]
        if unused:  # DynamoDB refuses the call (a ValidationException; moto too)
            raise ValueError(f"ExpressionAttributeNames unused in expressions: {unused}")
        with self._lock:
            item = self._find(params["Key"]) or {key: dict(value) for key, value in params["Key"].items()}
            changed: Item = {}
            pieces = _CLAUSE.split(params["UpdateExpression"])
            for clause, body in zip(pieces[1::2], pieces[2::2], strict=True):
                for part in _split_top_level(body):
                    if clause == "SET":
                        target, expression = (x.strip() for x in part.split("=", 1))
                        name = names.get(target, target)
                        if expression.startswith("if_not_exists("):
                            value = values[_split_top_level(expression[len("if_not_exists(") : -1])[1]]
                            item.setdefault(name, value)
                        else:
                            item[name] = values[expression]
                        changed[name] = item[name]
                    elif clause == "ADD":
                        target, placeholder = part.split()
                        name = names.get(target, target)
                        total = (
                            _number(item[name]) + _number(values[placeholder])
                            if name in item
                            else _number(values[placeholder])
                        )
                        item[name] = {"N": str(total)}
                        changed[name] = item[name]
                    else:
                        item.pop(names.get(part, part), None)
            self._store(item)
            size = item_bytes(item)
        self._bill("UpdateItem", wru=math.ceil(size / WRITE_UNIT_BYTES))
        returned = {"UPDATED_NEW": changed, "ALL_NEW": {key: dict(value) for key, value in item.items()}}
        return {"Attributes": returned[params["ReturnValues"]]} if params.get("ReturnValues") in returned else {}

    def batch_get_item(self, **params: Any) -> dict[str, Any]:
        """BatchGetItem (strongly consistent): every key answered, 1 RRU per key under 4 KB."""
        responses: dict[str, list[Item]] = {}
        rru = 0
        with self._lock:
            for table, request in params["RequestItems"].items():
                found = [item for key in request["Keys"] if (item := self._find(key)) is not None]
                responses[table] = found
                rru += len(request["Keys"]) + sum(item_bytes(i) // READ_UNIT_BYTES for i in found)
        self._bill("BatchGetItem", rru=rru)
        return {"Responses": responses}

    def batch_write_item(self, **params: Any) -> dict[str, Any]:
        """BatchWriteItem of puts and deletes: every one done, billed per started KB."""
        wru = 0
        with self._lock:
            for writes in params["RequestItems"].values():
                for write in writes:
                    if "PutRequest" in write:
                        item = write["PutRequest"]["Item"]
                        wru += math.ceil(item_bytes(item) / WRITE_UNIT_BYTES)
                        self._store(item)
                    else:
                        gone = self._drop(write["DeleteRequest"]["Key"])
                        wru += math.ceil(item_bytes(gone) / WRITE_UNIT_BYTES) if gone else 1
        self._bill("BatchWriteItem", wru=wru)
        return {}

    def query(self, **params: Any) -> dict[str, Any]:
        """Query `pk = :p` (optionally `AND begins_with(sk, :s)` or `AND sk > :gt`), one page, billed per 4 KB
        read (half a unit eventually consistent)."""
        values = params["ExpressionAttributeValues"]
        pk = (values.get(":p") or values[":u"])["S"]
        prefix = (values.get(":s") or values.get(":a") or {"S": ""})["S"]
        after = values.get(":gt", {"S": ""})["S"]
        with self._lock:
            found = [
                _load(item)
                for sk, item in self.items.partition(pk)
                if sk.startswith(prefix) and (not after or sk > after)
            ]
            size = sum(item_bytes(item) for item in found)
        units = max(1, math.ceil(size / READ_UNIT_BYTES))
        self._bill("Query", rru=units if params.get("ConsistentRead") else units / 2)
        if params.get("ProjectionExpression") == "sk":
            found = [{"sk": item["sk"]} for item in found]
        return {"Items": found, "Count": len(found)}
