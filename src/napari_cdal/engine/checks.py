"""Checks run before any compute: option ranges, output places, image headers and memory.

Every check raises InputError with one line that names the option, the value and the fix, so the
CLI and the widgets can refuse bad input before a model is loaded or a file is touched.
"""

from __future__ import annotations

import errno
import math
import os
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

from napari_cdal.engine.config import ModelConfig
from napari_cdal.engine.defaults import MAX_COUNT, MPP_RANGE, SEED_RANGE, SEED_RANGE_TEXT
from napari_cdal.engine.segment.windows import WINDOW_PX

ACTIVATION_COPIES = 6
"""Working tensors of a network's full-resolution width alive at once in one pass, beside the U-Net's skips; an
upper estimate: peak memory measured per sample and model pixel of a 512-px window (ru_maxrss, K = 4) was 866 bytes for
the bundled H&E model, 527 for the tiny test model and 1,220 for the hippocampus model, which this gives as 1,320, 688
and 1,336."""

POSTPROCESS_BYTES_PER_PIXEL = 64
"""The instance step and the stain check on the input grid (tracemalloc measured 46 B/px at its peak)."""

MEMORY_HEADROOM = 0.8
"""Share of the free memory one image may plan to use; the rest is left to the system and napari."""


class InputError(ValueError):
    """An option or input that cannot work; the message is one line naming it and the fix."""


def check_input_file(path: str | Path, what: str = "file") -> Path:
    """A file that can be opened: a missing one is FileNotFoundError, a symbolic link that loops or points nowhere,
    a folder or an unreadable entry an InputError saying which (not "not found")."""
    path = Path(path)
    try:
        info = path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(
                f"{path} is a symbolic link that loops back on itself (through {_link_chain(path)}); "
                f"point it at the {what}"
            ) from exc
        if exc.errno == errno.ENOENT and path.is_symlink():
            raise InputError(
                f"{path} is a symbolic link to {os.readlink(path)}, which does not exist; point it at the {what}"
            ) from exc
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise FileNotFoundError(f"{what} not found: {path}") from exc
        raise InputError(f"cannot open {path}: {exc.strerror or exc}") from exc
    if stat.S_ISDIR(info.st_mode):
        raise InputError(
            f"{path} is a folder, not an {what}" if what[0] in "aeiou" else f"{path} is a folder, not a {what}"
        )
    if not os.access(path, os.R_OK):
        raise InputError(f"cannot read {path}: permission denied")
    return path


def _link_chain(path: Path, most: int = 8) -> str:
    """The links of a looping symbolic link up to the first one seen again, for the message: a -> b -> a."""
    chain, seen, current = [str(path)], {os.path.abspath(path)}, path
    for _ in range(most):
        try:
            target = Path(os.readlink(current))
        except OSError:
            break
        current = target if target.is_absolute() else current.parent / target
        chain.append(str(target))
        if os.path.abspath(current) in seen:
            break
        seen.add(os.path.abspath(current))
    return " -> ".join(chain)


def check_mpp(value: float, option: str = "--mpp") -> float:
    """A finite µm/px within MPP_RANGE."""
    low, high = MPP_RANGE
    if not (isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high):
        raise InputError(
            f"{option} {value} is not a µm per pixel between {low} and {high}; a 40x tile is 0.25, a 20x tile 0.5"
        )
    return float(value)


def check_threshold(value: float, option: str = "--threshold") -> float:
    """A probability threshold strictly between 0 and 1."""
    if not (isinstance(value, (int, float)) and 0.0 < value < 1.0):
        raise InputError(f"{option} {value} must lie strictly between 0 and 1; use e.g. 0.5")
    return float(value)


def check_at_least(value: int | None, least: int, option: str, most: int = MAX_COUNT) -> int | None:
    """An integer option (None: not given) of at least `least` and at most `most` (a C int unless said)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise InputError(f"{option} {value} must be an integer of at least {least}")
    if value > most:
        raise InputError(f"{option} {value} must be an integer between {least} and {most}")
    return value


def check_seed(value: int | None, option: str = "--seed") -> int | None:
    """A seed (None: not given) that torch's and numpy's generators take: SEED_RANGE."""
    if value is None:
        return None
    low, high = SEED_RANGE
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InputError(f"{option} {value} must be between {SEED_RANGE_TEXT}; the same seed repeats a run")
    return value


def check_patch_size(value: int, config: ModelConfig, option: str = "--patch-size") -> int:
    """A positive multiple of the model's size multiple (one halving per network level)."""
    multiple = config.size_multiple
    if isinstance(value, bool) or not isinstance(value, int) or value < multiple or value % multiple:
        nearest = max(multiple, round(value / multiple) * multiple) if isinstance(value, int) else 256
        raise InputError(
            f"{option} {value} must be a positive multiple of {multiple} for this model; use e.g. {nearest}"
        )
    return value


def check_output_folder(folder: str | Path, option: str = "--out") -> Path:
    """A folder that exists and is writable, or can be created: refused before any work is done."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{option} {folder} is a file; give a folder")
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{option} {folder} cannot be created: {existing} is a file, not a folder")
    try:
        _probe_write(existing)
    except OSError as exc:
        where = "" if existing == folder else f" (it would be made in {existing})"
        raise InputError(
            f"{option} {folder} is not writable{where}: {exc.strerror or exc}; choose a folder you can write to"
        ) from exc
    return folder


def _probe_write(folder: Path) -> None:
    """Create and remove a hidden file in `folder`: the one sure test of writing there (read-only disks too)."""
    with tempfile.TemporaryFile(prefix=".napari-cdal-probe.", dir=folder):
        pass


def check_output_file(path: str | Path, option: str = "--out") -> Path:
    """A file path whose folder is writable or creatable and which is not itself a folder."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{option} {path} is a folder; give a file name, e.g. {path / 'model.safetensors'}")
    check_output_folder(path.parent, option)
    return path


def check_new_outputs(paths: Iterable[Path], overwrite: bool = False) -> None:
    """Refuse outputs that are folders, and existing files unless `overwrite` (the --overwrite flag)."""
    existing = []
    for path in paths:
        if path.is_dir():
            raise InputError(f"{path} is a folder where an output file goes; move it or choose another --out")
        if path.exists():
            existing.append(path)
    if existing and not overwrite:
        more = f" and {len(existing) - 1} more already exist" if len(existing) > 1 else " already exists"
        raise InputError(
            f"{existing[0]}{more}; nothing was written: choose another --out, or pass --overwrite to replace them"
        )


def available_memory() -> int | None:
    """Bytes of memory free for a new allocation (Linux MemAvailable, else free pages), or None if unknown."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def sample_pixel_bytes(config: ModelConfig, sampling_steps: int) -> int:
    """Bytes one sample takes per model pixel of a network pass: G's skips and working tensors, D's working
    tensors (its first level is twice its width) and the sampler's own maps of that sample (x_k, x̂0, x_s, the chain)."""
    skips = sum(config.base_width * mult / 4**level for level, mult in enumerate(config.channel_mults))
    working = ACTIVATION_COPIES * (config.base_width * config.channel_mults[0] + 2 * config.disc_width)
    sampler = (sampling_steps + 4) * config.label_channels
    return int(4 * (skips + working + sampler))


def network_peak_bytes(config: ModelConfig, pass_pixels: int, sampling_steps: int, samples: int) -> int:
    """An upper estimate of one network pass's memory: `samples` (K) samples of `pass_pixels` model pixels each, and
    the image encoder's features (once per pass)."""
    return int(
        pass_pixels
        * (samples * sample_pixel_bytes(config, sampling_steps) + 4 * (config.image_channels + config.base_width))
    )


def segment_peak_bytes(
    height: int,
    width: int,
    image_mpp: float,
    config: ModelConfig,
    sampling_steps: int,
    samples: int,
    keep_steps: bool = True,
    with_attention: bool = True,
) -> int:
    """An upper estimate of segment_image's peak memory for an image of that size, in bytes.

    Per input pixel: the image as float32, the probability maps (with the uncertainty and D's last
    map), the labels, and the x̂0, chain (one plane more: x_T) and attention stacks
    when kept; per model-grid pixel the same maps on the model's grid; and the network passes,
    one window (at most WINDOW_PX a side) at a time with its K samples in one batch, which grow with
    K and the model's widths (network_peak_bytes).
    """
    factor = config.grid_factor(height, width, image_mpp) ** 2
    maps = config.label_channels + (1 if samples > 1 else 0) + (1 if with_attention else 0)  # with D's last map
    stacks = sampling_steps * (3 if with_attention else 2) + 1 if keep_steps else 0
    per_image_pixel = 4 * (config.image_channels + maps + 2 * stacks) + 8 + POSTPROCESS_BYTES_PER_PIXEL
    per_model_pixel = 4 * (config.image_channels * 2 + maps + stacks + 2)
    model_pixels = height * width * factor
    pass_pixels = min(model_pixels, (WINDOW_PX + config.size_multiple) ** 2)
    return int(
        height * width * per_image_pixel
        + model_pixels * per_model_pixel
        + network_peak_bytes(config, int(pass_pixels), sampling_steps, samples)
    )


def volume_peak_bytes(
    shape: tuple[int, int, int],
    config: ModelConfig,
    sampling_steps: int,
    samples: int,
    slices_per_batch: int,
    keep_steps: bool = True,
) -> int:
    """An upper estimate of segment_volume's peak memory for a volume of `shape`, in bytes.

    Per voxel: the volume as float32, its slices with their neighbours (image_channels planes), the
    class probabilities twice (slices and volume), the uncertainty and labels, and the step, chain
    and attention stacks when kept; and the network passes, `slices_per_batch` slices with their K
    samples each.
    """
    slice_axis = config.slice_axis
    plane = math.prod(shape) // shape[slice_axis]
    stacks = 3 * sampling_steps + 1 if keep_steps else 0
    per_voxel = 4 * (1 + config.image_channels + 2 * config.label_channels + 1 + stacks) + 1
    passes = network_peak_bytes(config, plane, sampling_steps, samples * min(slices_per_batch, shape[slice_axis]))
    return int(math.prod(shape) * per_voxel + passes)


def byte_size(count: int) -> str:
    """A count of bytes as people read it: GiB from 1 GiB up, else MiB."""
    return f"{count / 2**30:.1f} GiB" if count >= 2**30 else f"{count / 2**20:.0f} MiB"


def check_memory(
    needed: int, what: str, fix: str = "crop it into tiles of a few thousand pixels a side and segment those"
) -> None:
    """Refuse work whose estimated peak memory exceeds what is free; the message ends with `fix`."""
    free = available_memory()
    if free is not None and needed > MEMORY_HEADROOM * free:
        raise InputError(f"{what} needs about {byte_size(needed)} of memory but {byte_size(free)} are free; {fix}")
