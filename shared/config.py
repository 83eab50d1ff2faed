"""The DBRX architecture as one frozen dataclass, read from a HF config.json.

Reads both the original dbrx-base/dbrx-instruct files (rope theta in
`attn_config`) and what newer transformers' `save_pretrained` writes (theta in
`rope_parameters`, preferred when present).
"""

from dataclasses import asdict, dataclass
from pathlib import Path

from .artifacts import read_json
from .errors import InvalidInput

DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class DbrxConfig:
    vocab_size: int
    d_model: int
    n_heads: int
    n_layers: int
    kv_n_heads: int
    ffn_hidden_size: int
    moe_num_experts: int
    moe_top_k: int
    max_seq_len: int = 2048
    rope_theta: float = 10000.0
    clip_qkv: float | None = None
    moe_normalize_expert_weights: float | None = 1.0
    norm_eps: float = 1e-5
    torch_dtype: str = "bfloat16"

    def __post_init__(self):
        positive = ["vocab_size", "d_model", "n_heads", "n_layers", "kv_n_heads",
                    "ffn_hidden_size", "moe_num_experts", "moe_top_k", "max_seq_len"]
        for name in positive:
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise InvalidInput(f"config: {name} must be a positive integer, got {getattr(self, name)!r}")
        if self.d_model % self.n_heads:
            raise InvalidInput(f"config: d_model {self.d_model} is not a multiple of n_heads {self.n_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise InvalidInput(f"config: head dim {self.d_model // self.n_heads} must be even for rotary embeddings")
        if self.n_heads % self.kv_n_heads:
            raise InvalidInput(f"config: n_heads {self.n_heads} is not a multiple of kv_n_heads {self.kv_n_heads}")
        if self.moe_top_k > self.moe_num_experts:
            raise InvalidInput(f"config: moe_top_k {self.moe_top_k} exceeds moe_num_experts {self.moe_num_experts}")
        if self.clip_qkv is not None and self.clip_qkv <= 0:
            raise InvalidInput(f"config: clip_qkv must be positive or null, got {self.clip_qkv}")
        if self.torch_dtype not in DTYPES:
            raise InvalidInput(f"config: torch_dtype {self.torch_dtype!r} is not one of {', '.join(DTYPES)}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def qkv_size(self) -> int:
        return (self.n_heads + 2 * self.kv_n_heads) * self.head_dim

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_hf_dict(cls, hf: dict) -> "DbrxConfig":
        """Build from the dict of a HF DBRX config.json; refuses other models."""
        model_type = hf.get("model_type")
        if model_type != "dbrx":
            raise InvalidInput(f"config.json is not a DBRX config: model_type is {model_type!r}, expected 'dbrx'")
        attn, ffn = hf.get("attn_config") or {}, hf.get("ffn_config") or {}
        act = (ffn.get("ffn_act_fn") or {"name": "silu"}).get("name", "silu")
        if act != "silu":
            raise InvalidInput(f"config: ffn_act_fn {act!r} is not supported (DBRX uses silu)")
        try:
            return cls(
                vocab_size=hf["vocab_size"],
                d_model=hf["d_model"],
                n_heads=hf["n_heads"],
                n_layers=hf["n_layers"],
                kv_n_heads=attn.get("kv_n_heads", 1),
                ffn_hidden_size=ffn.get("ffn_hidden_size", 3584),
                moe_num_experts=ffn.get("moe_num_experts", 4),
                moe_top_k=ffn.get("moe_top_k", 1),
                max_seq_len=hf.get("max_seq_len", 2048),
                rope_theta=float(_rope_theta(hf, attn)),
                clip_qkv=attn.get("clip_qkv"),
                moe_normalize_expert_weights=_normalize_p(ffn.get("moe_normalize_expert_weights", 1.0)),
                torch_dtype=_hf_dtype(hf),
            )
        except KeyError as missing:
            raise InvalidInput(f"config.json lacks the DBRX key {missing}") from None

    @classmethod
    def from_hf_dir(cls, model_dir: str | Path) -> "DbrxConfig":
        return cls.from_hf_dict(read_json(Path(model_dir) / "config.json",
                                          missing="a HF DBRX model directory needs config.json"))

    @classmethod
    def from_checkpoint_dict(cls, ckpt: dict) -> "DbrxConfig":
        """Build from a TensorRT-LLM checkpoint's config.json (docs/trtllm-checkpoint.md), or an
        engine's `pretrained_config`; the p-norm comes from our `dbrx_serve` section when present,
        else from `moe.normalization_mode` (1: p = 1, 0: none)."""
        if ckpt.get("architecture") != "DbrxForCausalLM":
            raise InvalidInput(f"checkpoint config: architecture is {ckpt.get('architecture')!r}, "
                               "expected 'DbrxForCausalLM'")
        moe = ckpt.get("moe") or {}
        try:
            return cls(
                vocab_size=ckpt["vocab_size"], d_model=ckpt["hidden_size"], n_heads=ckpt["num_attention_heads"],
                n_layers=ckpt["num_hidden_layers"],
                kv_n_heads=ckpt.get("num_key_value_heads") or ckpt["num_attention_heads"],
                ffn_hidden_size=ckpt["intermediate_size"], moe_num_experts=moe["num_experts"],
                moe_top_k=moe["top_k"], max_seq_len=ckpt.get("max_position_embeddings", 2048),
                rope_theta=float(ckpt.get("rotary_base", 10000.0)), clip_qkv=ckpt.get("clip_qkv"),
                moe_normalize_expert_weights=_checkpoint_norm_p(ckpt, moe),
                norm_eps=float(ckpt.get("norm_epsilon", 1e-5)), torch_dtype=ckpt.get("dtype", "bfloat16"))
        except KeyError as missing:
            raise InvalidInput(f"checkpoint config lacks the key {missing}") from None


def _checkpoint_norm_p(ckpt: dict, moe: dict) -> float | None:
    ours = ckpt.get("dbrx_serve") or {}
    if "moe_normalize_expert_weights" in ours:
        return _normalize_p(ours["moe_normalize_expert_weights"])
    return 1.0 if moe.get("normalization_mode", 1) == 1 else None


def _rope_theta(hf: dict, attn: dict) -> float:
    rope = hf.get("rope_parameters") or {}
    if "rope_theta" in rope:
        return rope["rope_theta"]
    return attn.get("rope_theta", 10000.0)


def _normalize_p(value) -> float | None:
    return None if value is None else float(value)


def _hf_dtype(hf: dict) -> str:
    dtype = hf.get("torch_dtype") or hf.get("dtype") or "bfloat16"
    return dtype if dtype in DTYPES else "bfloat16"
