"""What the device under a tensor offers the kernels: inline PTX (NVIDIA GPUs), its compute capability,
its multiprocessors, and programmatic dependent launch (PDL).

PDL (NVIDIA, compute capability 9.0 and up): a kernel launched with it may start while the kernel before
it in the stream is still running -- its programs are scheduled and set up under the other's tail -- and
`wait_for_inputs` (griddepcontrol.wait) holds each program until that kernel has finished and its writes
are visible. Every kernel of this package calls it before it touches global memory: before loading what
an earlier kernel may have written, and before any store (the caching allocator may hand a kernel memory
that an earlier one still reads), so kernels keep their stream order; the overlap saves each launch's
latency and set-up. A kernel that waits has seen its predecessor finish, which had seen its own, so the
order holds down the chain; kernels of torch and cuBLAS between ours launch without PDL and wait as
usual. On an H200, a CUDA graph of 800 small kernels: 1.72 us a kernel without, 1.12 with
(bench/results/gemm_split_pdl_probe.json). `DBRX_PDL=0` in the environment turns it off (a comparison).
"""

import functools
import os

import torch
import triton
import triton.language as tl

PDL_ON = os.environ.get("DBRX_PDL", "1") != "0"


def on_nvidia(t: torch.Tensor) -> bool:
    """Whether t is on an NVIDIA GPU, where inline PTX runs (ROCm's tensors say is_cuda too)."""
    return t.is_cuda and torch.version.hip is None


def _index(device: torch.device) -> int:
    """A CUDA device's index (the current device where it names none)."""
    return device.index if device.index is not None else torch.cuda.current_device()


@functools.cache
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def capability(t: torch.Tensor) -> tuple[int, int]:
    """The compute capability of t's GPU (asked once a device)."""
    return _capability(_index(t.device))


@functools.cache
def _multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_sms(device: torch.device) -> int:
    """Multiprocessors to fill; on the CPU (Triton's interpreter) a few, so tests stay quick."""
    if device.type != "cuda":
        return 4
    return _multiprocessors(_index(device))


def pdl(t: torch.Tensor) -> dict:
    """A launch's PDL flags for a kernel on t's device: the kernel's PDL (it waits) and Triton's
    launch_pdl (it may start early), both on NVIDIA GPUs of compute capability 9+ unless DBRX_PDL=0."""
    on = PDL_ON and on_nvidia(t) and capability(t)[0] >= 9
    return dict(PDL=on, launch_pdl=on)


@triton.jit
def wait_for_inputs(PDL: tl.constexpr):
    """Wait until the kernels before this one have finished (PDL), then let the next kernel launch: once
    every program of this one has passed here (its last wave has started), the next one's programs are
    scheduled as resources free and wait here in turn. (Letting it launch before the wait, together with
    an L2 prefetch of the linear layers' weights, not measured apart, was slower: bench/notes-gpu.md.)"""
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
