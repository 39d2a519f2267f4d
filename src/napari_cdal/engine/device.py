"""Choosing the compute device once, and the autocast that goes with it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from napari_cdal.engine.defaults import DEVICE_CHOICES, PRECISION_CHOICES


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else the CPU; asking for CUDA without one is an error."""
    if name not in DEVICE_CHOICES and not name.startswith("cuda:"):
        raise ValueError(f"device must be one of {DEVICE_CHOICES}, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu")
    return torch.device(name)


@contextlib.contextmanager
def autocast(device: torch.device, precision: str = "auto") -> Iterator[None]:
    """The arithmetic of torch's network passes: `precision` of PRECISION_CHOICES on `device`.

    auto is mixed precision on CUDA (bf16 where supported, else fp16) and float32 on the CPU, so
    tests on the CPU see exactly the float32 path; bfloat16 autocasts on either; float32 never.
    """
    if precision not in PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {PRECISION_CHOICES}, got {precision!r}")
    if device.type == "cuda" and precision != "float32":
        wanted = "bfloat16" if precision == "bfloat16" or torch.cuda.is_bf16_supported() else "float16"
        with torch.autocast("cuda", dtype=getattr(torch, wanted)):
            yield
    elif device.type == "cpu" and precision == "bfloat16":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            yield
    else:
        yield


def make_rng(seed: int | None) -> torch.Generator:
    """A CPU torch.Generator, an rng (None: seeded afresh): noise drawn on the CPU repeats on any device."""
    rng = torch.Generator(device="cpu")
    if seed is None:
        rng.seed()
    else:
        rng.manual_seed(int(seed))
    return rng
