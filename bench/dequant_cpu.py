"""The CPU plain path's int4 dequantize (what the torch backend's weight-only modules do at every call):
from an engine's tiles (shared/tiles.py) against from the checkpoint's bytes (two columns a byte).

    python bench/dequant_cpu.py [--experts 4 --out 2048 --in 1024 --group_size 0]

Prints one JSON object last: ms per dequantize (median of --repeats), and whether both give the same floats."""

import argparse
import json
import time

import torch

from dbrx_serve.shared.tiles import tile_values, tile_weight
from dbrx_serve.shared.quantization import dequantize_values, dequantize_weight, pack_int4


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--out", type=int, default=2048)
    parser.add_argument("--in", dest="in_features", type=int, default=1024)
    parser.add_argument("--group_size", type=int, default=0, help="group-wise scales (0: per channel)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    q = torch.randint(-8, 8, (args.experts, args.out, args.in_features), dtype=torch.int8, generator=g)
    packed = pack_int4(q.transpose(1, 2).contiguous())  # the checkpoint's [E, in, out/2]
    groups = (args.in_features // args.group_size,) if args.group_size else ()
    scale = torch.rand(args.experts, *groups, args.out, generator=g)
    tiles = tile_weight(packed, 4)

    def from_checkpoint():
        return dequantize_weight(packed, scale, "int4")

    def from_tiles():
        return dequantize_values(tile_values(tiles, 4, args.out, args.in_features).transpose(-1, -2), scale)

    result = {"shape": [args.experts, args.out, args.in_features], "group_size": args.group_size,
              "threads": torch.get_num_threads(),
              "ms_from_checkpoint_bytes": round(median_ms(from_checkpoint, args.repeats), 1),
              "ms_from_tiles": round(median_ms(from_tiles, args.repeats), 1),
              "equal": bool(torch.equal(from_checkpoint(), from_tiles()))}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
