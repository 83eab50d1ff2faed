"""A pipeline stage's runner holds only its own layers: its rank file's weights, a KV cache sized
for its layers alone, and the int8 KV scales of its global layers (indexed from 0 by local layer)."""

import torch

from dbrx_serve.services.inference.engine_dir import load_engine_dir
from dbrx_serve.services.inference.limits import EngineLimits
from dbrx_serve.services.inference.model_runner import ModelRunner
from dbrx_serve.services.inference.parallel import OneRank


class Stage(OneRank):
    """Rank `rank`'s share, built alone (no world: nothing is run)."""

    def __init__(self, rank: int):
        self.rank = rank


def test_each_pipeline_stage_holds_and_scales_only_its_own_layers(engine_dir):
    engine = load_engine_dir(engine_dir("pp2int8kv"))
    limits = EngineLimits.from_build_config(engine.build, num_kv_blocks=4)
    scales = engine.kv_scales
    assert len(scales.k) == 2 and scales.k[0] != scales.k[1]  # two layers, told apart by their scales
    for rank in (0, 1):
        runner = ModelRunner(engine, limits, "cpu", parallel=Stage(rank))
        assert list(runner.model.shape.layers) == [rank] and len(runner.model.transformer.layers) == 1
        assert runner.cache.k.shape[0] == runner.cache.v.shape[0] == 1 and runner.cache.k.dtype == torch.int8
        assert (runner.cache.scales.k, runner.cache.scales.v) == ((scales.k[rank],), (scales.v[rank],))
        assert hasattr(runner.model.transformer, "vocab_embedding") == (rank == 0)
        assert hasattr(runner.model, "lm_head") == (rank == 1)
