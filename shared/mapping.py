"""Tensor, pipeline and expert parallelism: who holds what (docs/trtllm-checkpoint.md).

rank = pp_rank * tp + tp_rank; moe_tp_rank = tp_rank // moe_ep;
moe_ep_rank = tp_rank % moe_ep. Layers of pipeline rank k are
tensor_split(arange(L), pp)[k].
"""

from dataclasses import dataclass

from .config import DbrxConfig
from .errors import InvalidInput


@dataclass(frozen=True)
class Mapping:
    tp_size: int = 1
    pp_size: int = 1
    moe_tp_size: int = 1
    moe_ep_size: int = 1

    def __post_init__(self):
        for name in ("tp_size", "pp_size", "moe_tp_size", "moe_ep_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise InvalidInput(f"mapping: {name} must be a positive integer, got {getattr(self, name)!r}")
        if self.moe_tp_size * self.moe_ep_size != self.tp_size:
            raise InvalidInput(
                f"mapping: moe_tp_size {self.moe_tp_size} x moe_ep_size {self.moe_ep_size} "
                f"must equal tp_size {self.tp_size}")

    @classmethod
    def from_flags(cls, tp_size: int = 1, pp_size: int = 1,
                   moe_tp_size: int | None = None, moe_ep_size: int | None = None) -> "Mapping":
        """convert_checkpoint.py's defaults: neither given -> (tp, 1); one given -> the other is tp / it."""
        if moe_tp_size is None and moe_ep_size is None:
            moe_tp_size, moe_ep_size = tp_size, 1
        elif moe_tp_size is None:
            moe_tp_size = _divide(tp_size, moe_ep_size, "moe_ep_size")
        elif moe_ep_size is None:
            moe_ep_size = _divide(tp_size, moe_tp_size, "moe_tp_size")
        return cls(tp_size, pp_size, moe_tp_size, moe_ep_size)

    @classmethod
    def from_config(cls, mapping: dict) -> "Mapping":
        """A config.json's `mapping` object; missing keys are tp 1, pp 1, moe_tp = tp, moe_ep 1."""
        tp = mapping.get("tp_size", 1)
        return cls(tp, mapping.get("pp_size", 1), mapping.get("moe_tp_size", tp), mapping.get("moe_ep_size", 1))

    @property
    def world_size(self) -> int:
        return self.tp_size * self.pp_size

    def tp_rank(self, rank: int) -> int:
        return rank % self.tp_size

    def pp_rank(self, rank: int) -> int:
        return rank // self.tp_size

    def moe_tp_rank(self, rank: int) -> int:
        return self.tp_rank(rank) // self.moe_ep_size

    def moe_ep_rank(self, rank: int) -> int:
        return self.tp_rank(rank) % self.moe_ep_size

    def layers(self, rank: int, num_layers: int) -> range:
        """Global layer indices held by this rank's pipeline stage (first stages get the extras)."""
        base, extra = divmod(num_layers, self.pp_size)
        k = self.pp_rank(rank)
        start = k * base + min(k, extra)
        return range(start, start + base + (1 if k < extra else 0))

    def is_first_pp(self, rank: int) -> bool:
        return self.pp_rank(rank) == 0

    def is_last_pp(self, rank: int) -> bool:
        return self.pp_rank(rank) == self.pp_size - 1

    def to_dict(self) -> dict:
        return {"world_size": self.world_size, "tp_size": self.tp_size, "pp_size": self.pp_size,
                "moe_tp_size": self.moe_tp_size, "moe_ep_size": self.moe_ep_size}

    def check_fits(self, cfg: DbrxConfig) -> None:
        """Refuse, before any work, a mapping the model cannot be split by."""
        t, nkv = self.tp_size, cfg.kv_n_heads
        checks = [
            (cfg.moe_num_experts % self.moe_ep_size == 0,
             f"moe_ep_size {self.moe_ep_size} does not divide the {cfg.moe_num_experts} experts"),
            (cfg.ffn_hidden_size % self.moe_tp_size == 0,
             f"moe_tp_size {self.moe_tp_size} does not divide the expert FFN size {cfg.ffn_hidden_size}"),
            (cfg.n_heads % t == 0, f"tp_size {t} does not divide the {cfg.n_heads} attention heads"),
            (self.pp_size <= cfg.n_layers, f"pp_size {self.pp_size} exceeds the {cfg.n_layers} layers"),
            (t % nkv == 0 if t > nkv else nkv % t == 0,
             f"tp_size {t} and the {nkv} kv heads do not divide one another"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidInput(f"mapping: {message}")


def _divide(tp_size: int, part: int, name: str) -> int:
    if part < 1 or tp_size % part:
        raise InvalidInput(f"mapping: {name} {part} does not divide tp_size {tp_size}")
    return tp_size // part
