"""Fine-tuning: learn from corrected masks (tiles) or corrected slices (volumes) without touching the source."""

from __future__ import annotations

import copy
import dataclasses
import re
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from napari_cdal.engine.config import FINETUNE_CONFIG, TrainConfig, current_record
from napari_cdal.engine.defaults import DEFAULT_IMAGE_MPP
from napari_cdal.engine.events import Progress
from napari_cdal.engine.io.checkpoint import OutputError
from napari_cdal.engine.method.model import CdalModel, is_bundled, save_model
from napari_cdal.engine.training.acceptance import CHECK_SEED, Verdict, judge, noise_of
from napari_cdal.engine.training.corrections import FinetunePair, VolumeCorrection, prepare_pairs, prepare_volumes
from napari_cdal.engine.training.loop import training_loop
from napari_cdal.engine.training.replay import replay_tiles, with_replay
from napari_cdal.engine.training.run import make_patch_source, scored, validation_hook
from napari_cdal.engine.training.state import TrainState

SOURCE_LOSS_SETTINGS = (
    "adam_betas",
    "mse_weight",
    "adversarial_weight",
    "dice_weight",
    "bce_weight",
    "r1_gamma",
    "r1_interval",
    "flips",
)
"""Settings taken over from the source model's training, so fine-tuning optimises the same losses (and
flips images only when the source did: a hippocampus model tells anterior from posterior by orientation)."""


SOURCE_SUMMARY_KEYS = ("data", "iterations", "wall_seconds", "best", "finetuned_from")


def finetune_config(**changes: Any) -> TrainConfig:
    """Fine-tuning's settings: config.FINETUNE_CONFIG with `changes` (any TrainConfig key, former names too).

    At run time the loss weights (SOURCE_LOSS_SETTINGS) come from the source model's own training,
    so that fine-tuning optimises what it was trained for; the patch size is capped by the corrected
    regions and the warm-up by the iterations (finetune_train_config).
    """
    return TrainConfig.from_dict({**FINETUNE_CONFIG.to_dict(), **changes})


@dataclass
class FinetuneResult:
    """The new model (EMA weights, with its record) and how the run ended."""

    model: CdalModel
    record: dict[str, Any]
    stopped_early: bool
    best_step: int | None
    kept_start: bool
    before: dict[str, Any] | None = None
    """The starting model's scores on the held-back part, with the check's seed (None when nothing was held back)."""
    after: dict[str, Any] | None = None
    """The returned weights' scores on the held-back part, with the check's seed."""
    verdict: Verdict | None = None
    """The acceptance rule's judgement of after against before (acceptance.judge); None: not checked."""

    @property
    def improved(self) -> bool | None:
        """True when the returned weights beat the start beyond noise on the held-back part; None: not checked."""
        return None if self.verdict is None else self.verdict.improved

    def report(self) -> str:
        """The check in plain words: 'on the part you corrected and we held back: 0.77 → 0.78 Dice, 0.60 → 0.63
        AJI (touching nuclei told apart), 31 → 36 of 40 nuclei right'; what to do when nothing was held back.

        The AJI and the nuclei right are there because the acceptance rule weighs them (acceptance.judge),
        and the verdict follows: better beyond the noise, or not."""
        if self.before is None or self.after is None:
            return (
                "nothing was held back to check it (the corrected regions are too small or too few): "
                "compare its masks with the old model's before relying on it"
            )
        words = f"{self.before['dice']:.2f} → {self.after['dice']:.2f} Dice"
        if self.before.get("aji") is not None and self.after.get("aji") is not None:
            words += f", {self.before['aji']:.2f} → {self.after['aji']:.2f} AJI (touching nuclei told apart)"
        if "nuclei_truth" in self.before:
            words += (
                f", {self.before['nuclei_right']} → {self.after['nuclei_right']} of "
                f"{self.before['nuclei_truth']} nuclei right"
            )
        verdict = f": {self.verdict.words()}" if self.verdict is not None else ""
        return f"on the part you corrected and we held back: {words}{verdict}"


class FinetuneSaveError(ValueError):
    """The fine-tuned model was not written; the message says why and what to do, nothing is left behind."""


def finetune_train_config(source: CdalModel, settings: TrainConfig, patch_size: int) -> TrainConfig:
    """The loop's TrainConfig: the fine-tune's settings with the source's loss settings (SOURCE_LOSS_SETTINGS)."""
    base = source.record.get("train_config") or {}
    losses = {key: base[key] for key in SOURCE_LOSS_SETTINGS if key in base}
    losses = {key: tuple(value) if isinstance(value, list) else value for key, value in losses.items()}
    return dataclasses.replace(
        settings,
        **losses,
        patch_size=patch_size,
        lr_min=min(settings.lr_min, settings.lr_g, settings.lr_d),
        warmup_steps=min(settings.warmup_steps, settings.iterations),
        checkpoint_every=settings.iterations + 1,
    )


def source_summary(model: CdalModel) -> dict[str, Any]:
    """Where a fine-tuned model came from: the source file's name and its record's headline."""
    summary: dict[str, Any] = {"model": Path(model.source).name if model.source else "(in memory)"}
    record = current_record(model.record)
    summary.update({key: record[key] for key in SOURCE_SUMMARY_KEYS if key in record})
    return summary


def _patience_spent(validation: list[dict[str, Any]], best_step: int, patience: int) -> bool:
    return patience > 0 and sum(1 for row in validation if row["step"] > best_step) >= patience


def finetune(
    model: CdalModel,
    pairs: list[FinetunePair] | list[VolumeCorrection],
    config: TrainConfig | None = None,
    device: torch.device | str = "cpu",
    image_mpp: float = DEFAULT_IMAGE_MPP,
) -> Generator[Progress, None, None]:
    """Fine-tune a copy of `model` on corrected pairs; yields events, the last one 'done' with a FinetuneResult.

    A model of classes takes VolumeCorrections (their corrected slices, prepare_volumes; `image_mpp`
    is not used), a nucleus model FinetunePairs (prepare_pairs): one loop, one checkpoint format.
    Events: 'note' (text) first for each thing the user should know (a binary mask split, the
    corrected slices), then
    'train' (step, steps, losses) every step; with a held-back part also 'validate' (one
    per part) and 'validate_done' (step, steps, scores), the first at step 0, and 'validate' events of
    the acceptance check (the start and the result scored again with CHECK_SEED). `model` is never
    modified and nothing is written: closing the generator cancels the run and leaves no trace.
    Bad pairs raise ValueError at the first event (call prepare_pairs to check them up front).
    """
    settings = config or finetune_config()
    device = torch.device(device)
    started = time.perf_counter()
    volumes = model.config.is_multiclass
    prepared = (
        prepare_volumes(pairs, model.config, settings)
        if volumes
        else prepare_pairs(pairs, model.config, image_mpp, settings)
    )
    for index, note in enumerate(prepared.notes):
        yield Progress("note", index + 1, len(prepared.notes), note)
    working = CdalModel(
        model.config, copy.deepcopy(model.generator), copy.deepcopy(model.discriminator), {}, model.source, model.replay
    ).to(device)
    train_config = finetune_train_config(model, settings, prepared.patch_size)
    state = TrainState.create(working, train_config)
    sample_batch = make_patch_source(prepared.tiles, state, model.config, prepared.regions)
    replayed = 0
    if settings.replay_share > 0 and model.replay is not None and not volumes:
        replay = make_patch_source(replay_tiles(model.replay), state, model.config)
        sample_batch, replayed = with_replay(sample_batch, replay, settings.replay_share, train_config.batch_size)

    best: dict[str, Any] = {}

    def keep_best(current: TrainState) -> None:
        best.update(step=current.step, model=current.exported_model())

    evaluation = prepared.evaluation
    on_validate = validation_hook(evaluation, on_best=keep_best) if evaluation else None
    start_check: dict[str, Any] | None = None
    if on_validate is not None and evaluation is not None:
        yield from on_validate(state)  # step 0: the starting weights are a candidate too
        start_check = yield from scored(evaluation, state.exported_model(), CHECK_SEED)
    stopped_early = False
    loop = training_loop(state, sample_batch, device, None, on_validate)
    try:
        for event in loop:
            if event.stage == "done":
                break
            yield event
            if event.stage == "validate_done" and _patience_spent(
                state.record["validation"], best["step"], settings.patience
            ):
                stopped_early = state.step < train_config.iterations
                break
    finally:
        loop.close()

    final = best["model"] if best else state.exported_model()
    best_step = best.get("step")
    kind = "volume" if volumes else "image"
    record: dict[str, Any] = {
        "finetuned_from": source_summary(model),
        "data": f"fine-tune corrections ({len(prepared.names)} {kind}{'s' if len(prepared.names) != 1 else ''})",
        "iterations": state.step,
        "wall_seconds": round(time.perf_counter() - started, 2),
        "train_config": train_config.to_dict(),
        "finetune": {
            "images": prepared.names,
            "pairs": len(prepared.names),
            **(
                {"slices": len(prepared.tiles) + len(prepared.holdout), "slice_axis": model.config.slice_axis}
                if volumes
                else {"nuclei": prepared.nuclei, "image_mpp": image_mpp}
            ),
            "patch_size": prepared.patch_size,
            "replayed_per_batch": replayed,
            "settings": settings.to_dict(),
            "held_back": [tile.name for tile in prepared.holdout],
            "validation": state.record["validation"],
            "best_step": best_step,
            "stopped_early": stopped_early,
            "kept_start": best_step == 0,
            "history": state.record["history"],
            "notes": prepared.notes,
        },
    }
    before = after = verdict = None
    if start_check is not None and evaluation is not None:
        noise = noise_of(state.record["validation"][0], start_check)
        before = {"step": 0, **start_check}
        after = before if best_step == 0 else {"step": best_step, **(yield from scored(evaluation, final, CHECK_SEED))}
        verdict = judge(before, after, noise)
        record["finetune"].update(
            check_seed=CHECK_SEED, noise=noise, gains=verdict.gains, margins=verdict.margins, improved=verdict.improved
        )
    record["finetune"].update(before=before, after=after)
    final = CdalModel(final.config, final.generator, final.discriminator, record, "", model.replay).eval()
    result = FinetuneResult(final, record, stopped_early, best_step, best_step == 0, before, after, verdict)
    yield Progress("done", state.step, train_config.iterations, result)


def suggest_new_name(path: str | Path) -> Path:
    """A free file name beside `path`: <stem>-2<suffix>, -3, ... (an existing -N goes on counting)."""
    path = Path(path)
    suffix = "".join(path.suffixes) or ".safetensors"
    stem = path.name[: len(path.name) - len("".join(path.suffixes))] if path.suffixes else path.name
    match = re.fullmatch(r"(.*)-(\d+)", stem)
    base, number = (match.group(1), int(match.group(2)) + 1) if match else (stem, 2)
    while (candidate := path.with_name(f"{base}-{number}{suffix}")).exists():
        number += 1
    return candidate


def check_new_model_path(path: str | Path) -> Path:
    """`path` if a fine-tuned model may be written there: a new file, outside the bundled weights."""
    path = Path(path)
    if is_bundled(path):
        raise FinetuneSaveError(
            f"path {path} is the bundled model, which is never replaced; save the "
            "fine-tuned model under a new name, e.g. cdal_finetuned.safetensors"
        )
    if path.exists():
        raise FinetuneSaveError(
            f"path {path} already exists and a fine-tuned model never replaces a file; "
            f"choose a new name, e.g. {suggest_new_name(path)}"
        )
    return path


def save_finetuned(model: CdalModel, path: str | Path) -> Path:
    """Write a fine-tuned model atomically at a new `path`; never replaces a file or the bundled model."""
    path = check_new_model_path(path)
    try:
        save_model(path, model, replace=False)
    except FileExistsError as exc:
        raise FinetuneSaveError(
            f"path {path} appeared while saving and is kept; choose a new name, e.g. {suggest_new_name(path)}"
        ) from exc
    except OutputError as exc:
        reason = exc.reason
        raise FinetuneSaveError(
            f"could not write the fine-tuned model to {path} ({reason}); nothing was "
            "written and the source model is unchanged: free some disk space or "
            "choose another folder"
        ) from exc
    return path
