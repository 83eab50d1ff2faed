"""The MPI world's messages as bytes, without pickle: JSON of a few registered frozen dataclasses,
each tagged with its type's name. A rank rebuilds only the types named in `message_types`, from
plain values (strings, numbers, booleans, None, tuples and those dataclasses), so bytes from
another rank can never run code (pickle would run whatever the bytes name). A step's plan does
not come here: it travels as an int32 array as is (world.send).

    encode(Open(...)) -> b'{"type": "Open", "fields": {"executor_id": 1, ...}}'
"""

import dataclasses
import functools
import json
from typing import Any

TYPE, FIELDS = "type", "fields"


@functools.cache
def message_types() -> dict[str, type]:
    """Every type a message may hold, by name (imported here: the modules import world.py)."""
    from dbrx_serve.shared.mapping import Mapping

    from .executor import Open
    from .limits import EngineLimits
    from .world import Agreement, Exit, Hello, Release

    return {cls.__name__: cls for cls in (Open, Mapping, EngineLimits, Hello, Agreement, Release, Exit)}


def encode(message: Any) -> bytes:
    return json.dumps(_plain(message), separators=(",", ":")).encode()


def decode(data: bytes) -> Any:
    return _typed(json.loads(data))


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if message_types().get(type(value).__name__) is not type(value):
            raise TypeError(f"{type(value).__qualname__} is not a world message type (wire.message_types)")
        return {TYPE: type(value).__name__,
                FIELDS: {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise TypeError(f"a world message cannot carry {type(value).__qualname__}")


def _typed(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_typed(item) for item in value)
    if not isinstance(value, dict):
        return value
    cls = message_types().get(value.get(TYPE))
    if cls is None or not isinstance(value.get(FIELDS), dict):
        raise ValueError(f"not a world message: type {str(value.get(TYPE))[:100]!r}")
    return cls(**{name: _typed(item) for name, item in value[FIELDS].items()})
