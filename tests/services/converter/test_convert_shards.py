"""Shard invariants: gathering the shards of a tp/pp/ep conversion gives back the
tp1 tensors exactly; every rank file loads into our model with its local shape."""

import json

import pytest
import torch

from dbrx_serve.shared.config import DbrxConfig
from dbrx_serve.shared.mapping import Mapping
from dbrx_serve.shared.model import DbrxModel, LocalShape
from dbrx_serve.shared.testing import make_hf_model

from .conftest import SHARD_SPEC, read_checkpoint, run_convert

MAPPINGS = {
    "tp2": dict(tp_size=2),
    "tp4": dict(tp_size=4),  # 2 kv heads: each replicated on 2 ranks
    "pp2": dict(pp_size=2),
    "tp2pp2": dict(tp_size=2, pp_size=2),
    "ep2": dict(tp_size=2, moe_ep_size=2),
    "tp4-mtp2-ep2": dict(tp_size=4, moe_tp_size=2, moe_ep_size=2),
}


@pytest.fixture(scope="module")
def unsharded(shard_model, tmp_path_factory):
    _, ranks = read_checkpoint(run_convert(shard_model[0], tmp_path_factory.mktemp("tp1") / "ckpt"))
    return ranks[0]


def local_layers(mapping: Mapping, rank: int, tensors: dict) -> dict[int, dict[str, torch.Tensor]]:
    """{global layer: {role: tensor}} of one rank file."""
    layers = mapping.layers(rank, SHARD_SPEC.n_layers)
    out: dict[int, dict] = {}
    for name, tensor in tensors.items():
        if name.startswith("transformer.layers."):
            local, role = name.removeprefix("transformer.layers.").split(".", 1)
            out.setdefault(layers[int(local)], {})[role] = tensor
    return out


def gather_qkv(parts: list[torch.Tensor], mapping: Mapping, cfg: DbrxConfig) -> torch.Tensor:
    """Q pieces concatenated; each kv head taken from a rank that holds it."""
    hd, t, nkv = cfg.head_dim, mapping.tp_size, cfg.kv_n_heads
    q_rows, kvl = cfg.n_heads * hd // t, max(nkv // t, 1)
    q = torch.cat([p[:q_rows] for p in parts])
    k, v = [None] * nkv, [None] * nkv
    for r, p in enumerate(parts):
        first = r * nkv // t
        for j in range(kvl):
            for heads, start in ((k, q_rows), (v, q_rows + kvl * hd)):
                piece = p[start + j * hd:start + (j + 1) * hd]
                assert heads[first + j] is None or torch.equal(heads[first + j], piece)  # replicas agree
                heads[first + j] = piece
    return torch.cat([q] + k + v)


def gather_experts(parts: list[torch.Tensor], mapping: Mapping, split_dim: int, halves: int) -> torch.Tensor:
    """Expert tensors of tp ranks -> all experts: columns across moe_tp ranks, experts across moe_ep ranks."""
    by_ep = []
    for ep in range(mapping.moe_ep_size):
        cols = [parts[mtp * mapping.moe_ep_size + ep] for mtp in range(mapping.moe_tp_size)]
        chunks = [c.chunk(halves, dim=split_dim) for c in cols]  # fc: the v1 half, then the w1 half
        by_ep.append(torch.cat([torch.cat([c[h] for c in chunks], dim=split_dim) for h in range(halves)],
                               dim=split_dim))
    return torch.cat(by_ep, dim=0)


def gather_layer(per_tp: list[dict], mapping: Mapping, cfg: DbrxConfig) -> dict[str, torch.Tensor]:
    first = per_tp[0]
    for role in ("input_layernorm.weight", "post_layernorm.weight", "mlp.router.weight"):
        assert all(torch.equal(p[role], first[role]) for p in per_tp)  # replicated, never split
    return {
        "input_layernorm.weight": first["input_layernorm.weight"],
        "post_layernorm.weight": first["post_layernorm.weight"],
        "mlp.router.weight": first["mlp.router.weight"],
        "attention.qkv.weight": gather_qkv([p["attention.qkv.weight"] for p in per_tp], mapping, cfg),
        "attention.dense.weight": torch.cat([p["attention.dense.weight"] for p in per_tp], dim=1),
        "mlp.fc.weight": gather_experts([p["mlp.fc.weight"] for p in per_tp], mapping, -2, 2),
        "mlp.proj.weight": gather_experts([p["mlp.proj.weight"] for p in per_tp], mapping, -1, 1),
    }


def gather(ranks: list[dict], mapping: Mapping, cfg: DbrxConfig) -> dict[str, torch.Tensor]:
    t = mapping.tp_size
    out = {"transformer.vocab_embedding.weight": ranks[0]["transformer.vocab_embedding.weight"],
           "transformer.ln_f.weight": ranks[-1]["transformer.ln_f.weight"]}
    for r in range(t):
        assert torch.equal(ranks[r]["transformer.vocab_embedding.weight"], out["transformer.vocab_embedding.weight"])
    head = torch.cat([ranks[mapping.world_size - t + r]["lm_head.weight"] for r in range(t)])
    assert head.shape[0] == t * -(-cfg.vocab_size // t) and not head[cfg.vocab_size:].any()  # zero padding
    out["lm_head.weight"] = head[:cfg.vocab_size]
    for pp in range(mapping.pp_size):
        per_tp = [local_layers(mapping, pp * t + r, ranks[pp * t + r]) for r in range(t)]
        for layer in per_tp[0]:
            gathered = gather_layer([p[layer] for p in per_tp], mapping, cfg)
            out.update({f"transformer.layers.{layer}.{role}": x for role, x in gathered.items()})
    return out


@pytest.mark.parametrize("name", list(MAPPINGS))
def test_gathered_shards_equal_the_unsharded_tensors(name, shard_model, unsharded, tmp_path):
    config, ranks = read_checkpoint(run_convert(shard_model[0], tmp_path / name, **MAPPINGS[name]))
    mapping = Mapping.from_flags(**{k: v for k, v in config["mapping"].items() if k != "world_size"})
    assert mapping == Mapping.from_flags(**MAPPINGS[name]) and len(ranks) == mapping.world_size
    gathered = gather(ranks, mapping, DbrxConfig.from_hf_dir(shard_model[0]))
    assert gathered.keys() == unsharded.keys()
    for key, tensor in unsharded.items():
        assert gathered[key].dtype == tensor.dtype and torch.equal(gathered[key], tensor), key


@pytest.mark.parametrize("name", ["tp4", "tp2pp2", "tp4-mtp2-ep2"])
def test_each_rank_file_loads_into_its_local_model(name, shard_model, tmp_path):
    """Names, shapes and dtypes of every rank file are exactly our model's parameters."""
    ckpt = run_convert(shard_model[0], tmp_path / name, **MAPPINGS[name])
    _, ranks = read_checkpoint(ckpt)
    cfg, mapping = DbrxConfig.from_hf_dir(shard_model[0]), Mapping.from_flags(**MAPPINGS[name])
    for rank, tensors in enumerate(ranks):
        model = DbrxModel(cfg, LocalShape.of(cfg, mapping, rank))
        model.load_state_dict(tensors, strict=True)
        assert tensors["transformer.layers.0.mlp.router.weight"].dtype == torch.float32


def test_parallel_workers_write_the_same_bytes(shard_model, tmp_path):
    """--workers 3 (spawned processes) and --workers 1 give identical files."""
    one = run_convert(shard_model[0], tmp_path / "one", tp_size=2, pp_size=2)
    three = run_convert(shard_model[0], tmp_path / "three", tp_size=2, pp_size=2, workers=3)
    files = lambda d: {f["path"]: f["sha256"] for f in json.loads((d / "manifest.json").read_text())["files"]}
    assert files(one) == files(three) and len(files(one)) == 5  # config.json + 4 ranks


def test_a_bfloat16_hf_checkpoint_keeps_its_dtype_and_values(shard_model, tmp_path):
    """Real DBRX is stored in bfloat16: no --dtype keeps it; the values are the HF ones exactly."""
    hf = make_hf_model(SHARD_SPEC).to(torch.bfloat16)
    hf.save_pretrained(tmp_path / "bf16-model")
    config, ranks = read_checkpoint(run_convert(tmp_path / "bf16-model", tmp_path / "ckpt", tp_size=2,
                                                moe_ep_size=2))
    assert config["dtype"] == "bfloat16"
    mapping = Mapping.from_flags(tp_size=2, moe_ep_size=2)
    gathered = gather(ranks, mapping, DbrxConfig.from_hf_dir(tmp_path / "bf16-model"))
    state = hf.state_dict()
    assert torch.equal(gathered["transformer.layers.1.mlp.proj.weight"],
                       state["transformer.blocks.1.ffn.experts.mlp.w2"].view(4, 32, 64).transpose(1, 2))
    assert gathered["transformer.layers.1.mlp.router.weight"].dtype == torch.float32
    assert torch.equal(gathered["transformer.layers.1.mlp.router.weight"],
                       state["transformer.blocks.1.ffn.router.layer.weight"].float())
