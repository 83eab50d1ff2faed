"""Tuned GEMM launch configurations: the table a build stores in the engine
(`build_config.kernel_tuning`, docs/trtllm-checkpoint.md) and the one the
kernels consult at launch (gemm.py's `linear_config` and `moe_config`).

    {"<GPU name>": {"<shape key>": {"<batch bucket>": GemmConfig.to_dict()}}}

A shape key names one GEMM of the engine as the kernels see it:
`<op>:<format>:n<N>:k<K>:e<E>`, e.g. `moe_up:int4g128:n21504:k6144:e16`
(op `linear`, `moe_up` (gate+up, SwiGLU fused) or `moe_down`; format `int8`,
`int4`, `int4g<group>` or the float dtype; N output and K input columns; E
experts, 1 for a linear layer). A call of T tokens takes the configuration of
the smallest bucket >= T; past the largest bucket, or for a shape the table
lacks, the default tiles. `install` makes one GPU's table the active one when
an engine opens (services/inference/model_runner.py); this module imports no
Triton, so gemm.py can import it.
"""

import logging
import re
from dataclasses import dataclass, fields

import torch

from dbrx_serve.shared.errors import InvalidInput

log = logging.getLogger("dbrx_serve.inference")

LINEAR, MOE_UP, MOE_DOWN = "linear", "moe_up", "moe_down"
SHAPE_KEY = re.compile(r"^(linear|moe_up|moe_down):(int8|int4(?:g(\d+))?|float32|float16|bfloat16)"
                       r":n(\d+):k(\d+):e(\d+)$")
POWERS_OF_TWO = ("block_m", "block_n", "block_k", "split_k", "num_warps")
TILES = ("gemm_kernel multiplies on tensor cores, block_m 16 or more; int8 and int4 weights are read a tile of "
         "64 x 64 at a time (shared/tiles.py): block_k 64 and block_n a multiple of 64")


@dataclass(frozen=True)
class GemmConfig:
    """A launch configuration: tile sizes, K split, warps, pipeline stages."""

    block_m: int = 16
    block_n: int = 64
    block_k: int = 128
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 4
    dequant: int = 1  # gemm_kernel's DEQ: 0 cast, 1 float-mantissa bits, 3 (int to bfloat16) inline PTX

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @property
    def reads_tiles(self) -> bool:
        """Whether gemm_kernel can read int8 or int4 weights with these tiles (TILES)."""
        return self.block_m >= 16 and self.block_k == 64 and self.block_n % 64 == 0

    def k_per_split(self, k: int) -> int:
        """The K rows of each split: a multiple of block_k (a split of group-wise int4 starts on a chunk of
        64 rows, so each chunk lies in one group of 64 or 128)."""
        rows = -(-k // self.split_k)
        return -(-rows // self.block_k) * self.block_k

    @classmethod
    def from_dict(cls, values, where: str) -> "GemmConfig":
        names = [f.name for f in fields(cls)]
        if not isinstance(values, dict) or sorted(values) != sorted(names):
            raise InvalidInput(f"{where}: a GEMM configuration needs exactly {', '.join(names)}, got {values!r}")
        for name, value in values.items():
            low = 0 if name == "dequant" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InvalidInput(f"{where}: {name} must be an integer >= {low}, got {value!r}")
            if name in POWERS_OF_TWO and value & (value - 1):
                raise InvalidInput(f"{where}: {name} must be a power of two, got {value}")
        if values["dequant"] not in (0, 1, 3):
            raise InvalidInput(f"{where}: dequant is 0, 1 or 3 (gemm.py's DEQ), got {values['dequant']}")
        return cls(**values)


def shape_key(op: str, fmt: str, n: int, k: int, experts: int) -> str:
    return f"{op}:{fmt}:n{n}:k{k}:e{experts}"


def device_name(device: torch.device) -> str:
    """The name a table is stored under: torch.cuda.get_device_name on CUDA, else the device type
    ("cpu": where Triton's interpreter runs the kernels in tests)."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


Table = dict[str, dict[int, GemmConfig]]  # shape key -> batch bucket -> configuration


class ActiveTable:
    """The table the kernels consult: one GPU's, installed when an engine opens; empty by default."""

    def __init__(self):
        self.table: Table = {}

    def config(self, key: str, num_tokens: int) -> GemmConfig | None:
        """The stored configuration of the smallest bucket >= num_tokens, or None (the defaults)."""
        buckets = self.table.get(key)
        if buckets is None:
            return None
        return next((config for bucket, config in buckets.items() if bucket >= num_tokens), None)


ACTIVE = ActiveTable()


def install(tables, device: torch.device) -> None:
    """Make the stored table of this device's GPU the active one (every GPU's table is checked
    first: a malformed one is refused); another GPU's tables leave the defaults, with a log line."""
    checked = {name: parse_table(table, f"kernel_tuning[{name!r}]") for name, table in check_tables(tables).items()}
    name = device_name(device)
    ACTIVE.table = checked.get(name, {})
    if checked and name not in checked:
        log.warning("kernel tuning: the engine was tuned on %s, not on this %s: the default tiles",
                    ", ".join(sorted(checked)), name)
    elif checked:
        log.info("kernel tuning: %d tuned GEMM shapes for %s", len(ACTIVE.table), name)


def check_tables(tables) -> dict:
    if not isinstance(tables, dict) or not all(isinstance(name, str) for name in tables):
        raise InvalidInput(f"build_config.kernel_tuning must map GPU names to tables, got {tables!r}")
    return tables


def parse_table(table, where: str) -> Table:
    """A stored table as configurations, checked: known shape keys, bucket numbers, configurations
    the kernels can launch for their shape, and the experts' two GEMMs on the same block_m."""
    if not isinstance(table, dict):
        raise InvalidInput(f"{where} must map shape keys to batch buckets, got {table!r}")
    parsed = {key: parse_buckets(key, buckets, f"{where}[{key!r}]") for key, buckets in table.items()}
    for key in parsed:
        check_expert_pair(parsed, key, where)
    return parsed


def parse_buckets(key: str, buckets, where: str) -> dict[int, GemmConfig]:
    match = SHAPE_KEY.match(key)
    if match is None:
        raise InvalidInput(f"{where}: a shape key is <op>:<format>:n<N>:k<K>:e<E> (op linear, moe_up or "
                           "moe_down; format int8, int4, int4g<group> or a float dtype), e.g. "
                           "moe_up:int4:n21504:k6144:e16")
    if not isinstance(buckets, dict) or not buckets or not all(str(b).isdigit() and int(b) > 0 for b in buckets):
        raise InvalidInput(f"{where} must map batch buckets (positive integers) to configurations, got {buckets!r}")
    parsed = {int(b): GemmConfig.from_dict(c, f"{where}[{b!r}]") for b, c in buckets.items()}
    for bucket, config in parsed.items():
        check_launchable(key, config, f"{where}[{str(bucket)!r}]")
    return dict(sorted(parsed.items()))


def check_launchable(key: str, config: GemmConfig, where: str) -> None:
    """InvalidInput where gemm() and FusedMoE cannot run `config` for the GEMM of this shape key on any
    device: a stored table's rule and the tuner's (tuner.launchable adds DEQ 3's device rule)."""
    match = SHAPE_KEY.match(key)
    fmt = match.group(2)
    if fmt.startswith("int") and not config.reads_tiles:
        raise InvalidInput(f"{where}: {TILES}")
    if min(config.block_m, config.block_n, config.block_k) < 16:
        raise InvalidInput(f"{where}: {TILES}: block_m, block_n and block_k of 16 or more")
    if config.dequant == 3 and not fmt.startswith("int"):
        raise InvalidInput(f"{where}: dequant 3 converts int8 and int4 weights only (gemm.py's DEQ), not {fmt}")


def check_expert_pair(table: Table, key: str, where: str) -> None:
    """An expert GEMM's partner (moe_up's moe_down of the same experts, and back) is tuned at the same
    buckets with the same block_m: both read the pairs sorted into blocks of one block_m (moe.py's
    `align`)."""
    op, fmt, _, n, k, experts = SHAPE_KEY.match(key).groups()
    if op == LINEAR:
        return
    up, down = ((key, shape_key(MOE_DOWN, fmt, int(k), int(n) // 2, int(experts))) if op == MOE_UP
                else (shape_key(MOE_UP, fmt, 2 * int(k), int(n), int(experts)), key))
    up_blocks = {b: c.block_m for b, c in table.get(up, {}).items()}
    down_blocks = {b: c.block_m for b, c in table.get(down, {}).items()}
    if up_blocks != down_blocks:
        raise InvalidInput(f"{where}: {up} and {down} must be stored at the same batch buckets with the same "
                           f"block_m (got {up_blocks or 'none'} and {down_blocks or 'none'})")
