"""The memory plan (services/inference/memory.py) of the whole DBRX model on this GPU: an engine of
random weights made on the device, opened as `dbrx serve inference` opens it (profiling pass, CUDA
graphs, KV pool under the budget), its plan printed, and the largest batch x context it admits.

    python bench/memory_plan.py --precision int4 --max_batch_size 128 --max_seq_len 32768

Prints one JSON object last.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from dbrx_serve.services.inference.limits import EngineLimits

from decode_model import FULL, ModelSpec, make_engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="int4", choices=["bf16", "int8", "int4"])
    parser.add_argument("--layers", type=int, default=40)
    parser.add_argument("--max_batch_size", type=int, default=128)
    parser.add_argument("--max_input_len", type=int, default=8192)
    parser.add_argument("--max_seq_len", type=int, default=32768)
    parser.add_argument("--max_num_tokens", type=int, default=8192)
    parser.add_argument("--gpu_memory_fraction", type=float, default=0.9)
    args = parser.parse_args()
    limits = EngineLimits(max_batch_size=args.max_batch_size, max_input_len=args.max_input_len,
                          max_seq_len=args.max_seq_len, max_num_tokens=args.max_num_tokens,
                          gpu_memory_fraction=args.gpu_memory_fraction)
    with tempfile.TemporaryDirectory() as workdir:
        engine = make_engine(ModelSpec(FULL, args.layers, args.precision), torch.device("cuda"), None, limits,
                             Path(workdir))
    plan = engine.runner.memory
    print(plan.describe(), file=sys.stderr)
    print(json.dumps({"device": torch.cuda.get_device_name(), "precision": args.precision, "layers": args.layers,
                      "limits": {k: v for k, v in vars(args).items() if k.startswith(("max_", "gpu_"))},
                      "budget_bytes": plan.budget_bytes, "weight_bytes": plan.weight_bytes,
                      "activation_bytes": plan.activation_bytes, "graph_pool_bytes": plan.graph_pool_bytes,
                      "other_bytes": plan.other_bytes, "kv_blocks": plan.num_blocks,
                      "kv_tokens": plan.num_kv_tokens, "tokens_a_sequence_at_max_batch": plan.tokens_at_max_batch,
                      "max_seq_len_sequences_at_once": plan.max_length_seqs}))


if __name__ == "__main__":
    main()
