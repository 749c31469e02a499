"""Formats for the data and flash columns (JSON by default)."""

from __future__ import annotations

import json
import pickle
from typing import Any, Protocol


class DataSerializer(Protocol):
    """What the ``data_serializer`` setting names: ``dumps`` to bytes, ``loads`` from bytes."""

    def dumps(self, value: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


class JSONSerializer:
    """Compact JSON, UTF-8 encoded. Pyramid 2 asks session values to be JSON-serializable."""

    _encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)

    def dumps(self, value: Any) -> bytes:
        return self._encoder.encode(value).encode("utf-8")

    def loads(self, data: bytes) -> Any:
        return json.loads(data)


class PickleSerializer:
    """Pickle. Only for applications that must keep non-JSON values and trust their database."""

    def dumps(self, value: Any) -> bytes:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)

    def loads(self, data: bytes) -> Any:
        return pickle.loads(data)


BUILTIN = {"json": JSONSerializer, "pickle": PickleSerializer}
