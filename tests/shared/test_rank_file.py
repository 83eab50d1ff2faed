"""The streaming rank-file writer produces exactly what safetensors' save_file does."""

import torch
from safetensors.torch import load_file, save_file

from dbrx_serve.shared.rank_file import RankFileWriter


def tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"b.weight": torch.randn(3, 5, generator=g).bfloat16(), "a.weight": torch.randn(4, generator=g),
            "z.q": torch.randint(-127, 128, (6, 8), generator=g, dtype=torch.int8),
            "m.h": torch.randn(2, 2, generator=g).half(), "aa": torch.randn(7, generator=g).bfloat16(),
            "x.scale": torch.tensor([0.25]), "e.experts": torch.randn(2, 3, 4, generator=g)}


def test_bytes_equal_save_file_in_any_insertion_order(tmp_path):
    ref = tmp_path / "ref.safetensors"
    save_file(tensors(), ref)
    for order in (list(tensors()), sorted(tensors(), reverse=True)):
        ours = tmp_path / "ours.safetensors"
        writer = RankFileWriter(ours)
        for group in (order[:3], order[3:]):
            writer.add_all({name: tensors()[name] for name in group})
        writer.finish()
        assert ours.read_bytes() == ref.read_bytes()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["ours.safetensors", "ref.safetensors"]  # no scratch


def test_abort_leaves_nothing(tmp_path):
    writer = RankFileWriter(tmp_path / "r.safetensors")
    writer.add("a", torch.ones(3))
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_values_round_trip(tmp_path):
    writer = RankFileWriter(tmp_path / "r.safetensors")
    writer.add_all(tensors())
    writer.finish()
    loaded = load_file(tmp_path / "r.safetensors")
    assert all(torch.equal(loaded[k], v) and loaded[k].dtype == v.dtype for k, v in tensors().items())
