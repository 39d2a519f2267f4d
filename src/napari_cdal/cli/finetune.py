"""`napari-cdal finetune`: a new model learned from images with corrected masks."""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import Any

from napari_cdal.cli import common
from napari_cdal.cli.common import CliError
from napari_cdal.engine.config import FINETUNE_CONFIG
from napari_cdal.engine.defaults import FINETUNE_D_LR_RATIO


def _read_mask(path: Path) -> Any:
    """A label image from a file; a grey image saved as RGB(A) becomes its one channel."""
    from napari_cdal.engine.io.images import read_image

    mask = read_image(path, labels=True)
    if mask.ndim == 3 and all((mask[..., c] == mask[..., 0]).all() for c in range(1, min(mask.shape[-1], 3))):
        mask = mask[..., 0]
    return mask


def cmd_finetune(args: argparse.Namespace) -> int:
    """Fine-tune a model on images with corrected masks; write the new model at --out, never over a file."""
    import math

    from napari_cdal.engine.checks import check_output_file
    from napari_cdal.engine.io.images import read_header, read_image
    from napari_cdal.engine.io.lock import output_lock
    from napari_cdal.engine.io.regions import read_regions
    from napari_cdal.engine.training.corrections import FinetunePair
    from napari_cdal.engine.training.finetune import check_new_model_path, finetune_config

    common.check_runtime(args)
    if args.lr is not None and not (math.isfinite(args.lr) and 0 < args.lr <= 1):
        raise CliError(f"--lr {args.lr} must be a learning rate in (0, 1]; the default is {FINETUNE_CONFIG.lr_g:g}")
    images, masks = [Path(p) for p in args.images], [Path(p) for p in args.masks]
    if len(images) != len(masks):
        raise CliError(f"got {len(images)} images but {len(masks)} --masks; give one mask per image, in the same order")
    out = check_new_model_path(check_output_file(args.out))
    regions = [Path(p) for p in args.regions] if args.regions else None
    if regions is not None and len(regions) != len(images):
        raise CliError(
            f"got {len(images)} images but {len(regions)} --regions; give one region file per image, in the same order"
        )
    shapes = [read_header(path).shape for path in images]
    for path in masks:
        read_header(path, labels=True)
    boxes: list[Any] = [None] * len(images)
    if regions is not None:
        for index, (path, shape) in enumerate(zip(regions, shapes, strict=True)):
            try:
                boxes[index] = read_regions(path, (shape[0], shape[1]), args.mpp)
            except ValueError as exc:
                raise CliError(str(exc)) from exc
    pairs = [
        FinetunePair(read_image(image), _read_mask(mask), box, f"{image.name} with {mask.name}")
        for image, mask, box in zip(images, masks, boxes, strict=True)
    ]
    overrides = {key: getattr(args, key) for key in ("iterations", "seed") if getattr(args, key) is not None}
    if args.lr is not None:
        overrides.update(lr_g=args.lr, lr_d=args.lr * FINETUNE_D_LR_RATIO)
    settings = finetune_config(**overrides)
    with output_lock(out):  # one run at a time writes --out
        check_new_model_path(out)  # again: a run that held the lock may have written it meanwhile
        return _finetune(args, pairs, settings, out)


def _finetune(args: argparse.Namespace, pairs: list[Any], settings: Any, out: Path) -> int:
    """Fine-tune on the checked pairs and save the new model at --out (locked)."""
    from napari_cdal.engine.training.finetune import FinetuneResult, finetune, save_finetuned

    device = common.setup_torch(args)
    model = common.load_model(args.model, device)
    events = finetune(model, pairs, settings, device, args.mpp)
    first = next(events)  # bad corrections are refused at the first event: in one line, before the bar opens
    bar = common.progress(settings.iterations, "finetune", "step")  # at 0 until the first step
    done: FinetuneResult | None = None
    try:
        for event in itertools.chain([first], events):
            if event.stage == "note":
                bar.write(f"note: {event.payload}", file=sys.stderr)
            elif event.stage == "train":
                bar.set_postfix(
                    {k: f"{v:.3f}" for k, v in event.payload.items() if k in ("mse", "dice", "d")}, refresh=False
                )
                common.advance(bar, event.index, event.total)
            elif event.stage == "done":
                done = event.payload
    finally:
        bar.close()
    result = common.finished(done, "fine-tuning")
    save_finetuned(result.model, out)
    print(
        f"fine-tuned {result.record['iterations']} iterations on {len(pairs)} image(s) in "
        f"{result.record['wall_seconds']:.0f} s; model: {out} (source {model.source} unchanged)"
    )
    advice = {True: "; use it", False: "; keep the source model, or compare their masks before using it", None: ""}[
        result.improved
    ]
    print(f"check: {result.report()}{advice}")
    return 0
