"""A probe of one GPU call (exploration): the attention projections' weights asked into L2 while the small
kernels before them run, from a second stream of the step's CUDA graph.

Between a layer's GEMMs the step runs small kernels (the K-split sums, the LayerNorms, rotary and cache
write, attention, the router) for ~35 us a layer at batch 1, when the GPU's memory is all but idle. The
qkv and dense weights do not depend on them: forked off the step's stream, a kernel of bulk prefetches
(`cp.async.bulk.prefetch.L2.global`, 2 KB each) can ask for dense's weights as qkv's GEMM ends and for
the next layer's qkv as the down GEMM ends, and the GEMM then reads them from L2.

    python bench/l2_prefetch_probe.py OUT_DIR --precision int8 --batch 1 --modes off 0/0 8/- off 0/0 8/-

bench/decode.py in turn with the engine as it is (`off`) and with the prefetches, each mode
`DENSE/QKV`: the eighths of that weight asked for (spread evenly through it), `0` a fork whose kernel
asks for nothing (what the second stream's fork and join cost alone), `-` no fork. Writes
OUT_DIR/l2_prefetch_probe_PRECISION.json: per run, the mode and bench/decode.py's decode rows.
"""
import argparse
import json
import os
import sys

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(__file__))
import decode  # noqa: E402

import dbrx_serve.services.inference.kernels as kernels  # noqa: E402
import dbrx_serve.services.inference.kernels.moe as moe  # noqa: E402
from dbrx_serve.services.inference.kernels.gemm import TritonWeightOnlyLinear  # noqa: E402
from dbrx_serve.services.inference.kernels.moe import FusedMoE  # noqa: E402

CHUNK = 2048  # bytes a prefetch: every weight here is whole tiles of 2 or 4 KB


@triton.jit
def l2_prefetch_kernel(ptr, chunks, EIGHTHS: tl.constexpr, BLOCK: tl.constexpr):
    """Chunks i of 2 KB with i % 8 < EIGHTHS asked into L2 (evenly through the weight)."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = (i < chunks) & (i % 8 < EIGHTHS)
    tl.inline_asm_elementwise(
        "{ .reg .pred p; setp.ne.u32 p, $2, 0; @p cp.async.bulk.prefetch.L2.global [$1], 2048; mov.u32 $0, 0; }",
        "=r,l,r", [ptr + i.to(tl.int64) * 2048, ok.to(tl.int32)], dtype=tl.int32, is_pure=False, pack=1)


def prefetch(t: torch.Tensor, eighths: int) -> None:
    chunks = t.numel() * t.element_size() // CHUNK
    block = 256
    l2_prefetch_kernel[(triton.cdiv(chunks, block),)](t, chunks, EIGHTHS=eighths, BLOCK=block, num_warps=1)


class Side:
    """The second stream: fork (prefetch there after what the main stream queued) and join (the main stream
    waits for it)."""

    eighths = {"qkv": None, "dense": None}
    streams: dict = {}
    pending = False
    next_qkv = None

    @classmethod
    def fork(cls, t: torch.Tensor, which: str) -> None:
        if cls.eighths[which] is None:
            return
        main = torch.cuda.current_stream()
        side = cls.streams.setdefault(t.device, torch.cuda.Stream(t.device))
        side.wait_stream(main)
        with torch.cuda.stream(side):
            prefetch(t, cls.eighths[which])
        cls.pending = True

    @classmethod
    def join(cls) -> None:
        if cls.pending:
            torch.cuda.current_stream().wait_stream(next(iter(cls.streams.values())))
            cls.pending = False


def partial_sums(self, rows):
    """TritonWeightOnlyLinear.partial_sums; after a qkv GEMM, dense's weights forked to L2."""
    parts = ORIGINAL["partial_sums"](self, rows)
    if getattr(self, "_dense", None) is not None:
        Side.join()  # the qkv prefetch forked by the last down GEMM
        Side.fork(self._dense.weight, "dense")
    return parts


def moe_forward(self, x):
    """FusedMoE.forward, the next layer's qkv known to its down GEMM (moe_gemm)."""
    Side.next_qkv = self._next_qkv
    return ORIGINAL["moe_forward"](self, x)


def moe_gemm(*args, topk_weights=None, **kwargs):
    """moe.py's gemm; after the down GEMM (the one weighted by the router), the next qkv forked to L2."""
    out = ORIGINAL["gemm"](*args, topk_weights=topk_weights, **kwargs)
    if topk_weights is not None:
        Side.join()  # dense's prefetch
        if Side.next_qkv is not None:
            Side.fork(Side.next_qkv.weight, "qkv")
    return out


def swap_linked(model):
    """kernels.swap_modules, then each qkv linked to its dense and each MoE to the next layer's qkv."""
    model = ORIGINAL["swap"](model)
    layers = model.transformer.layers
    for i, block in enumerate(layers):
        qkv, dense = block.attention.qkv, block.attention.dense
        qkv._dense = dense if isinstance(dense, TritonWeightOnlyLinear) else None
        nxt = layers[i + 1].attention.qkv if i + 1 < len(layers) else None
        block.mlp._next_qkv = nxt if isinstance(nxt, TritonWeightOnlyLinear) else None
    return model


ORIGINAL = {"swap": kernels.swap_modules, "partial_sums": TritonWeightOnlyLinear.partial_sums,
            "moe_forward": FusedMoE.forward, "gemm": moe.gemm}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--batch", nargs="+", default=["1", "8"])
    parser.add_argument("--layers", default="40")
    parser.add_argument("--modes", nargs="+", default=["off", "8/4", "off", "8/4"],
                        help="dense/qkv eighths prefetched a run ('-': no fork; 0: a fork that prefetches nothing), "
                             "'off' for none")
    args = parser.parse_args()
    result = {"gpu": torch.cuda.get_device_name(), "runs": []}
    kernels.swap_modules, moe.gemm = swap_linked, moe_gemm
    TritonWeightOnlyLinear.partial_sums, FusedMoE.forward = partial_sums, moe_forward
    for i, mode in enumerate(args.modes):
        dense, qkv = (None, None) if mode == "off" else (int(e) if e != "-" else None for e in mode.split("/"))
        Side.eighths = {"dense": dense, "qkv": qkv}
        rows = decode.decode_rows(os.path.join(args.out_dir, f"l2_prefetch_{i}.json"), args.precision, args.batch,
                                  args.layers)
        result["runs"].append({"precision": args.precision, "mode": mode, "decode": rows})
        print(json.dumps(result["runs"][-1]), flush=True)
    with open(os.path.join(args.out_dir, f"l2_prefetch_probe_{args.precision}.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
