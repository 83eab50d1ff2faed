"""Parallel mapping: convert_checkpoint.py's defaults and the refusals of the spec."""

import pytest

from dbrx_serve.shared.errors import InvalidInput
from dbrx_serve.shared.mapping import Mapping
from tests.shared.test_config import DBRX_INSTRUCT
from dbrx_serve.shared.config import DbrxConfig

DBRX = DbrxConfig.from_hf_dict(DBRX_INSTRUCT)


def test_moe_defaults_follow_convert_checkpoint():
    assert Mapping.from_flags(8) == Mapping(8, 1, 8, 1)
    assert Mapping.from_flags(8, moe_ep_size=2) == Mapping(8, 1, 4, 2)
    assert Mapping.from_flags(8, moe_tp_size=2) == Mapping(8, 1, 2, 4)
    with pytest.raises(InvalidInput, match="does not divide tp_size"):
        Mapping.from_flags(8, moe_ep_size=3)
    with pytest.raises(InvalidInput, match="must equal tp_size"):
        Mapping(4, 1, 2, 1)


def test_ranks_and_layers():
    m = Mapping(tp_size=2, pp_size=3, moe_tp_size=1, moe_ep_size=2)
    assert [(m.tp_rank(r), m.pp_rank(r)) for r in range(6)] == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]
    assert [m.moe_ep_rank(r) for r in range(2)] == [0, 1]
    assert [list(m.layers(r, 7)) for r in (0, 2, 4)] == [[0, 1, 2], [3, 4], [5, 6]]


@pytest.mark.parametrize("mapping,message", [
    (Mapping(32, 1, 32, 1), "does not divide the 48 attention heads"),
    (Mapping(32, 1, 1, 32), "does not divide the 16 experts"),
    (Mapping(1, 41), "exceeds the 40 layers"),
    (Mapping(12, 1, 12, 1), "do not divide"),
])
def test_refusals_name_the_numbers(mapping, message):
    with pytest.raises(InvalidInput, match=message):
        mapping.check_fits(DBRX)


def test_real_dbrx_mappings_fit():
    for m in [Mapping(8, 1, 8, 1), Mapping(16, 1, 16, 1), Mapping(4, 2, 2, 2), Mapping(8, 1, 1, 8)]:
        m.check_fits(DBRX)
