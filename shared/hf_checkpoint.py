"""A lazy reader for HF DBRX checkpoints: sharded safetensors with
`model.safetensors.index.json`, or a single `model.safetensors`.

Tensors are read one at a time through `safe_open`, so memory holds only what
the caller keeps. Missing tensors, wrong shapes and non-finite values are
reported with the tensor and file names.

Only the checkpoint's own faults are bad input (InvalidInput, which fails a job
for good): a missing file or tensor, a file safetensors cannot parse, a wrong
shape. An error of the disk or the machine while reading (an I/O error, out of
memory, a file that cannot be opened) is raised as itself, with a note naming
what was being read, so a job worker retries it and reports it as what it is
(shared/jobstore/worker.py).
"""

from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError, safe_open

from .artifacts import read_json
from .config import DbrxConfig
from .errors import DbrxServeError, InvalidInput

INDEX_FILE = "model.safetensors.index.json"


def hf_names(layer: int) -> dict[str, str]:
    """HF tensor names of one DBRX block, by role."""
    block = f"transformer.blocks.{layer}"
    return {
        "norm_1": f"{block}.norm_attn_norm.norm_1.weight",
        "Wqkv": f"{block}.norm_attn_norm.attn.Wqkv.weight",
        "out_proj": f"{block}.norm_attn_norm.attn.out_proj.weight",
        "norm_2": f"{block}.norm_attn_norm.norm_2.weight",
        "router": f"{block}.ffn.router.layer.weight",
        "w1": f"{block}.ffn.experts.mlp.w1",
        "v1": f"{block}.ffn.experts.mlp.v1",
        "w2": f"{block}.ffn.experts.mlp.w2",
    }


GLOBAL_NAMES = {"wte": "transformer.wte.weight", "norm_f": "transformer.norm_f.weight", "lm_head": "lm_head.weight"}


def expected_shapes(cfg: DbrxConfig) -> dict[str, tuple[int, ...]]:
    H, EI = cfg.d_model, cfg.moe_num_experts * cfg.ffn_hidden_size
    shapes = {GLOBAL_NAMES["wte"]: (cfg.vocab_size, H), GLOBAL_NAMES["norm_f"]: (H,),
              GLOBAL_NAMES["lm_head"]: (cfg.vocab_size, H)}
    for layer in range(cfg.n_layers):
        n = hf_names(layer)
        shapes.update({n["norm_1"]: (H,), n["Wqkv"]: (cfg.qkv_size, H), n["out_proj"]: (H, H), n["norm_2"]: (H,),
                       n["router"]: (cfg.moe_num_experts, H), n["w1"]: (EI, H), n["v1"]: (EI, H), n["w2"]: (EI, H)})
    return shapes


class HFCheckpoint:
    """Open a HF DBRX directory; `get(name)` reads one tensor."""

    def __init__(self, model_dir: str | Path):
        self.dir = Path(model_dir)
        self.config = DbrxConfig.from_hf_dir(self.dir)
        self.file_of = self._index()
        self._files = ExitStack()
        self._handles: dict[str, object] = {}
        self._shapes = expected_shapes(self.config)

    def _index(self) -> dict[str, str]:
        index = self.dir / INDEX_FILE
        if index.is_file():
            try:
                return dict(read_json(index)["weight_map"])
            except (KeyError, TypeError, ValueError) as err:
                raise InvalidInput(f"{index} is not a valid safetensors index ({err})") from None
        files = sorted(self.dir.glob("*.safetensors"))
        if not files:
            raise InvalidInput(f"{self.dir} has no *.safetensors weights and no {INDEX_FILE}")
        return {name: f.name for f in files for name in _keys_of(f)}

    def _handle(self, filename: str):
        if filename not in self._handles:
            path = self.dir / filename
            if not path.is_file():
                raise InvalidInput(f"{path} is named in {INDEX_FILE} but does not exist")
            self._handles[filename] = self._files.enter_context(open_safetensors(path))
        return self._handles[filename]

    def get(self, name: str) -> torch.Tensor:
        """One tensor, checked for shape and finiteness."""
        return self._read(name, lambda part: part[:])

    def get_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of one tensor, read alone (one expert's slice of w1, v1 or w2);
        the whole tensor's shape is checked, the rows' values for finiteness."""
        return self._read(name, lambda part: part[start:stop])

    def _read(self, name: str, take) -> torch.Tensor:
        if name not in self.file_of:
            raise InvalidInput(f"tensor {name} is missing from the checkpoint in {self.dir}")
        filename = self.file_of[name]
        handle = self._handle(filename)
        with reading(f"tensor {name} from {self.dir / filename}"):
            part = handle.get_slice(name)
            self._check_shape(name, filename, tuple(part.get_shape()))
            tensor = take(part)
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise InvalidInput(f"tensor {name} in {filename} holds NaN or Inf values")
        return tensor

    def _check_shape(self, name: str, filename: str, shape: tuple[int, ...]) -> None:
        expected = self._shapes.get(name)
        if expected is not None and shape != expected:
            raise InvalidInput(f"tensor {name} in {filename} has shape {shape}, expected {expected} from config.json")

    def check_layout(self) -> None:
        """Every tensor config.json implies is present with its shape; reads headers only, no data."""
        for name in self._shapes:
            if name not in self.file_of:
                raise InvalidInput(f"tensor {name} is missing from the checkpoint in {self.dir}")
            filename = self.file_of[name]
            handle = self._handle(filename)
            if name not in handle.keys():
                raise InvalidInput(f"tensor {name} is missing from {self.dir / filename} (named in {INDEX_FILE})")
            self._check_shape(name, filename, tuple(handle.get_slice(name).get_shape()))

    def close(self) -> None:
        self._files.close()
        self._handles.clear()

    def __enter__(self) -> "HFCheckpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _keys_of(path: Path) -> list[str]:
    with open_safetensors(path) as f:
        return list(f.keys())


def open_safetensors(path: Path):
    """`safe_open` of one file. safetensors reports any file it cannot open as missing, so the
    file is opened here first: a real reason (EIO, EACCES, EMFILE) is raised as itself."""
    with reading(str(path)):
        with open(path, "rb"):
            pass
        return safe_open(str(path), framework="pt")


@contextmanager
def reading(what: str) -> Iterator[None]:
    """Tell bad input from a failing machine while reading `what`: what safetensors cannot parse
    (SafetensorError) is bad input; anything else (OSError, MemoryError, torch's RuntimeError
    when it cannot map the file) is raised as itself, noting `what`."""
    try:
        yield
    except DbrxServeError:
        raise
    except SafetensorError as err:
        raise InvalidInput(f"cannot read {what}: not valid safetensors ({err})") from None
    except Exception as err:
        err.add_note(f"while reading {what}")
        raise
