"""Where sampling runs G's passes (the generator network): torch (the reference) or OpenVINO (2x faster on a bf16 CPU).

G is the cost of segmenting (benchmarks/peer_speed.py). OpenVINO runs the same weights,
converted once per model and kept in the cache folder (catalog.cache_dir), so only the first run of
a model pays the conversion. Anything that fails on the way (OpenVINO not installed, a conversion
error) falls back to torch, and the runtime says why. Training and fine-tuning always use torch.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
import threading
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_cdal.engine.defaults import DEFAULT_PRECISION, DEFAULT_RUNTIME, PRECISION_CHOICES, RUNTIME_CHOICES
from napari_cdal.engine.device import autocast
from napari_cdal.engine.method.model import CdalModel

CONVERSION_FORMAT = 1
"""Bumped when the conversion changes, so that older converted files in the cache are not reused."""


class Runtime:
    """Runs G's pass x̂_0 = G(x_next, t, features, z, previous x̂_0) for the sampler, in `precision`."""

    name = "torch"

    def __init__(self, model: CdalModel, precision: str, note: str = "") -> None:
        self.model = model
        self.precision = precision
        self.note = note

    @property
    def torch_precision(self) -> str:
        """The precision torch's own passes (D's) take under this runtime: its own."""
        return self.precision

    def describe(self) -> str:
        """What ran, in words, with the reason for a fallback: 'openvino bfloat16', 'torch auto (…)'."""
        return f"{self.name} {self.precision}" + (f" ({self.note})" if self.note else "")

    def generator_pass(
        self, x_next: torch.Tensor, t: torch.Tensor, features: torch.Tensor, z: torch.Tensor, previous_x0: torch.Tensor
    ) -> torch.Tensor:
        """G's estimate of x̂_0 in float32, on the model's device."""
        device = next(self.model.generator.parameters()).device
        with autocast(device, self.precision):
            return self.model.generator(x_next, t, features, z, previous_x0).float()


class _GeneratorForExport(nn.Module):
    """G with the image features broadcast over the batch inside the graph, so one converted graph takes any batch."""

    def __init__(self, generator: nn.Module, self_condition: bool) -> None:
        super().__init__()
        self.generator = generator
        self.self_condition = self_condition

    def forward(
        self,
        x_next: torch.Tensor,
        t: torch.Tensor,
        features: torch.Tensor,
        z: torch.Tensor,
        previous_x0: torch.Tensor | None = None,
    ) -> torch.Tensor:
        features = features.expand(x_next.shape[0], -1, -1, -1)
        return self.generator(x_next, t, features, z, previous_x0 if self.self_condition else None)


def generator_digest(model: CdalModel) -> str:
    """A fingerprint of G's weights and config: the cache key of its converted graph."""
    digest = hashlib.sha256(json.dumps(asdict(model.config), sort_keys=True, default=str).encode())
    digest.update(f"format {CONVERSION_FORMAT}".encode())
    for key, value in model.generator.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


def _weights_version(model: CdalModel) -> tuple[int, ...]:
    """Counts of in-place changes to G's weights: a converted graph is stale once they move (an optimiser step)."""
    return tuple(p._version for p in model.generator.parameters())


def _converted_graph(model: CdalModel, folder: Path) -> Path:
    """G converted to OpenVINO's format in `folder`/<digest>/, converting once; the folder appears whole or not."""
    import openvino as ov

    target = folder / generator_digest(model)
    graph = target / "generator.xml"
    if graph.exists():
        return graph
    config = model.config
    generator = model.generator
    example: tuple[torch.Tensor, ...] = (
        torch.zeros(2, config.label_channels, 64, 64),
        torch.zeros(2, dtype=torch.long),
        torch.zeros(1, config.base_width, 64, 64),
        torch.zeros(2, config.latent_dim),
    )
    if config.self_condition:
        example += (torch.zeros(2, config.label_channels, 64, 64),)
    wrapper = _GeneratorForExport(generator, config.self_condition).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on G's shape checks, which hold for any shape
        converted = ov.convert_model(wrapper, example_input=example)
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=folder))
    try:
        ov.save_model(converted, staging / "generator.xml", compress_to_fp16=False)
        try:
            os.rename(staging, target)
        except OSError:  # another process converted the same model first: theirs is as good
            if not graph.exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return graph


@functools.lru_cache(maxsize=1)
def _openvino_core() -> Any:
    import openvino as ov

    return ov.Core()


def bf16_native() -> bool:
    """True when OpenVINO computes bfloat16 natively on this CPU (AVX512-BF16 or AMX)."""
    return "BF16" in _openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@functools.lru_cache(maxsize=4)
def _compiled(graph: str, precision: str, threads: int) -> Any:
    """A compiled graph, kept per process: a second run of the same model starts at once."""
    hint = "bf16" if precision == "bfloat16" else "f32"
    return _openvino_core().compile_model(
        graph,
        "CPU",
        {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"},
    )


class OpenVinoRuntime(Runtime):
    """G through OpenVINO on the CPU; falls back to torch for a pass once G's weights have changed since conversion."""

    name = "openvino"

    def __init__(self, model: CdalModel, precision: str, compiled: Any) -> None:
        super().__init__(model, precision)
        self._request = compiled.create_infer_request()
        self._version = _weights_version(model)
        self._lock = threading.Lock()

    @property
    def torch_precision(self) -> str:
        """D's passes stay in torch at the device's default (float32 on the CPU): OpenVINO runs G alone."""
        return "auto"

    def generator_pass(
        self, x_next: torch.Tensor, t: torch.Tensor, features: torch.Tensor, z: torch.Tensor, previous_x0: torch.Tensor
    ) -> torch.Tensor:
        """G's estimate of x̂_0 from OpenVINO, or from torch in float32 if G was trained after conversion."""
        if _weights_version(self.model) != self._version:
            return Runtime(self.model, "float32").generator_pass(x_next, t, features, z, previous_x0)
        inputs = [x_next, t, features, z] + ([previous_x0] if self.model.config.self_condition else [])
        arrays = [np.ascontiguousarray(value.detach().cpu().numpy()) for value in inputs]
        with self._lock:
            out = self._request.infer(arrays)[0]
        return torch.from_numpy(np.array(out, dtype=np.float32))


def _checked(runtime: str, precision: str) -> None:
    if runtime not in RUNTIME_CHOICES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIME_CHOICES)}, got {runtime!r}")
    if precision not in PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {precision!r}")


def torch_bf16_native() -> bool:
    """True when torch computes bfloat16 natively on this CPU (AVX512-BF16 or AMX), not by emulation."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(probe is not None and probe() for probe in probes)


def _torch_runtime(model: CdalModel, precision: str, note: str = "") -> Runtime:
    """Torch at `precision`, 'auto' made concrete on a CPU: bfloat16 where torch computes it natively, else float32."""
    if precision == "auto" and next(model.generator.parameters()).device.type == "cpu":
        precision = "bfloat16" if torch_bf16_native() else "float32"
    return Runtime(model, precision, note)


def choose_runtime(
    model: CdalModel, runtime: str = DEFAULT_RUNTIME, precision: str = DEFAULT_PRECISION, cache: Path | None = None
) -> Runtime:
    """The runtime for sampling with `model` (RUNTIME_CHOICES, PRECISION_CHOICES), falling back to torch with a note.

    OpenVINO runs on the CPU only: on a GPU, auto is torch. On a CPU, precision auto becomes
    bfloat16 where the runtime computes it natively and float32 elsewhere; on a GPU it stays
    torch's mixed precision. `cache` is where converted graphs are kept (default models.cache_dir()).
    """
    _checked(runtime, precision)
    device = next(model.generator.parameters()).device
    if runtime == "torch" or (runtime == "auto" and device.type != "cpu"):
        return _torch_runtime(model, precision)
    if device.type != "cpu":
        return _torch_runtime(model, precision, f"OpenVINO runs on the CPU only, and the model is on {device.type}")
    try:
        import openvino  # noqa: F401
    except ImportError:
        return _torch_runtime(model, precision, "OpenVINO is not installed: pip install openvino")
    from napari_cdal.catalog import cache_dir

    try:
        converted_precision = precision if precision != "auto" else "bfloat16" if bf16_native() else "float32"
        graph = _converted_graph(model, (cache or cache_dir()) / "openvino")
        compiled = _compiled(str(graph), converted_precision, torch.get_num_threads())
    except Exception as exc:  # noqa: BLE001 - any failure of the optional runtime means the reference one
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return _torch_runtime(model, precision, f"OpenVINO failed, so torch: {reason[:160]}")
    return OpenVinoRuntime(model, converted_precision, compiled)


def with_runtime(
    model: CdalModel, runtime: str = DEFAULT_RUNTIME, precision: str = DEFAULT_PRECISION, cache: Path | None = None
) -> CdalModel:
    """`model` (same networks, not copied) whose sampling runs on the chosen runtime; see choose_runtime."""
    return replace(model, runtime=choose_runtime(model, runtime, precision, cache))
