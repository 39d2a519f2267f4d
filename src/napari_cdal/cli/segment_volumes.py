"""NIfTI volumes for `napari-cdal segment`: their output files, the model that fits them, their memory and one
volume's run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from napari_cdal.cli import common
from napari_cdal.cli.common import CliError

VOLUME_OUTPUTS: tuple[tuple[str, str, str], ...] = (
    ("labels", "", "_labels.nii.gz"),
    ("steps", "save_steps", "_steps.nii.gz"),
    ("chain", "save_steps", "_chain.nii.gz"),
    ("attention", "save_attention", "_attention.nii.gz"),
    ("uncertainty", "save_uncertainty", "_uncertainty.nii.gz"),
)
"""What segment writes per volume, NIfTI with the input's affine: <stem><suffix>, always (no flag) or when asked."""


def volume_outputs(args: argparse.Namespace, out: Path, stem: str) -> dict[str, Path]:
    if args.geojson or args.measurements or args.review:
        raise CliError(
            "--geojson, --measurements and --review describe nuclei of 2-D images; a volume gets "
            "<stem>_labels.nii.gz (and, when asked, its step, attention and uncertainty maps)"
        )
    return {kind: out / f"{stem}{suffix}" for kind, flag, suffix in VOLUME_OUTPUTS if not flag or getattr(args, flag)}


def check_model_fits(model: Any, volumes: list[Path], images: list[Path]) -> None:
    """A volume needs a model of classes and a 2-D image a nucleus model: say which, before any work."""
    name = Path(model.source).name
    if volumes and not model.config.is_multiclass:
        raise CliError(
            f"{volumes[0]} is a volume, but {name} segments 2-D images; give a volume model, "
            "e.g. --model cdal_hippocampus (napari-cdal info --list)"
        )
    if model.config.is_multiclass and len(images) > len(volumes):
        flat = next(path for path in images if path not in volumes)
        raise CliError(
            f"{name} segments volumes (.nii/.nii.gz), not the 2-D image {flat}; leave out --model "
            "for the bundled H&E model"
        )


def segment_volume_file(
    args: argparse.Namespace, model: Any, path: Path, files: dict[str, Path], sampling_steps: int, samples: int
) -> str:
    """One NIfTI volume through engine.segment.volume; every output keeps the input's shape and affine; returns the
    line that says what was found."""
    from napari_cdal.engine.events import TICK, run_to_end
    from napari_cdal.engine.io.volumes import read_volume, write_volume
    from napari_cdal.engine.segment.volume import class_voxels, segment_volume

    volume = read_volume(path)
    bar = common.progress(0, path.name, "slice")

    def show(event: Any) -> None:
        if event.stage != TICK:
            common.advance(bar, event.index, event.total)

    try:
        result = run_to_end(
            segment_volume(
                model,
                volume.data,
                sampling_steps,
                samples,
                args.seed,
                keep_steps=args.save_steps or args.save_attention,
                with_attention=args.save_attention,
            ),
            show,
        )
    finally:
        bar.close()
    maps = {
        "labels": result.labels,
        "uncertainty": result.uncertainty,
        "steps": None if result.steps is None else result.steps.transpose(1, 2, 3, 0),
        "chain": None if result.chain is None else result.chain.transpose(1, 2, 3, 0),
        "attention": None if result.attention is None else result.attention.transpose(1, 2, 3, 0),
    }
    for kind, file in files.items():
        write_volume(file, maps[kind], volume.affine)
    return f"{path.name}: {class_voxels(result.labels, model.config.class_names)}, {result.seconds:.1f} s"


def check_volume_memory(path: Path, model: Any, steps: int, samples: int, args: argparse.Namespace) -> None:
    """A volume and its segmentation must fit in the free memory (from its header: nothing is read yet)."""
    from napari_cdal.engine.checks import check_memory, volume_peak_bytes
    from napari_cdal.engine.io.volumes import read_volume_header
    from napari_cdal.engine.segment.volume import SLICES_PER_BATCH

    shape, _ = read_volume_header(path)
    keep = args.save_steps or args.save_attention
    check_memory(
        volume_peak_bytes(shape, model.config, steps, samples, SLICES_PER_BATCH, keep),
        f"{path} ({' x '.join(map(str, shape))} voxels, {samples} samples)",
        "give fewer --samples, leave out --save-steps/--save-attention, or crop the volume",
    )
