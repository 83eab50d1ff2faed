"""The MPI world's messages without pickle (services/inference/wire.py): every message type
round-trips through JSON; bytes naming any other type, and values of any other type, are refused."""

from dataclasses import dataclass

import pytest

from dbrx_serve.services.inference import wire
from dbrx_serve.services.inference.executor import Open
from dbrx_serve.services.inference.limits import EngineLimits
from dbrx_serve.services.inference.world import Agreement, Exit, Hello, Release
from dbrx_serve.shared.mapping import Mapping

MESSAGES = [Open(3, "/engines/tp2", Mapping(2, 1, 1, 2), EngineLimits(max_batch_size=4, num_kv_blocks=None), "cpu",
                 None, True, False),
            Hello(("127.0.0.1", 29500), "gloo"), Hello(None, "", "engine_tp2 has 2 ranks"), Agreement(17, None),
            Agreement(None, "rank 1: no such file"), Release((1, 2)), Exit(), ("node-7", 4242)]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_type_round_trips(message):
    data = wire.encode(message)
    assert isinstance(data, bytes) and wire.decode(data) == message


@pytest.mark.parametrize("data,match", [
    (b'{"type": "system", "fields": {"command": "rm -rf /"}}', "not a world message: type 'system'"),
    (b'{"type": "Open"}', "not a world message"),
    (b"\x80\x04\x95 not json", None),
])
def test_bytes_naming_anything_else_are_refused(data, match):
    with pytest.raises(ValueError, match=match):
        wire.decode(data)


@dataclass(frozen=True)
class Stranger:
    value: int = 1


@pytest.mark.parametrize("message", [Stranger(), Release(({1, 2},)), object()])
def test_values_of_other_types_are_refused_when_sent(message):
    with pytest.raises(TypeError, match="world message"):
        wire.encode(message)
