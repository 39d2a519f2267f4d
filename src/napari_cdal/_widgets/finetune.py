"""The Fine-tune dock widget: teaches a model the user's corrected masks in a napari thread_worker.

The widget only gathers (image, corrected Labels[, Shapes of corrected regions]) pairs and settings;
engine.training.finetune does the work. The new model is written atomically into the user's model folder
at the end of the run, so a cancel or an error leaves no file and every existing model untouched.
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FloatSpinBox, Label, LineEdit, PushButton, SpinBox
from psygnal import Signal

from napari_cdal._widgets._layers import MASK, TAG, image_mpp, is_edited
from napari_cdal._widgets._run import WorkerRun
from napari_cdal._widgets.segment import (
    RunFailure,
    device_choices,
    docked_segment_widget,
    image_pixels,
    load_model_cached,
    mpp_spin_box,
    set_mpp_from_layer,
)
from napari_cdal.models import MODEL_SUFFIX

if TYPE_CHECKING:
    import napari
    from napari.layers import Image, Labels, Shapes

    from napari_cdal.engine.events import Progress
    from napari_cdal.engine.training.corrections import FinetunePair

FOLLOW_SEGMENT = "<segment>"
WHOLE_IMAGE = None
DEFAULT_LEARNING_RATE = 1e-4
INVALID_STYLE = "background-color: #7a2a2a;"


@dataclass(frozen=True)
class FinetuneSettings:
    """What one click on Fine-tune runs with."""

    base_model: str
    output: Path
    device: str
    image_mpp: float
    steps: int
    learning_rate: float


def model_name_problem(name: str, folder: Path) -> str | None:
    """Why `name` can't name a new model in `folder` (None when it can)."""
    if not name:
        return "give the new model a name"
    if any(sep in name for sep in ("/", "\\", ":")) or name.startswith("."):
        return f"the name {name!r} must be a plain file name: no '/', '\\', ':' and no leading '.'"
    path = folder / f"{name}{MODEL_SUFFIX}"
    if path.exists():
        return f"a model named {name!r} already exists in {folder}; choose another name"
    return None


def default_model_name(base: str, image: str, now: time.struct_time | None = None) -> str:
    """`<base>-ft-<image>-YYYYMMDD-HHMM`, with path separators and spaces in the parts made '_'."""
    stamp = time.strftime("%Y%m%d-%H%M", now or time.localtime())
    parts = [base or "model", "ft", image or "image", stamp]
    clean = [
        part.strip().replace("/", "_").replace("\\", "_").replace(":", "_").replace(" ", "_")
        for part in parts
    ]
    return "-".join(clean).lstrip(".")


def layer_boxes(regions: Shapes, image: Image) -> list[tuple[int, int, int, int]]:
    """Each shape's bounding box as (y0, y1, x0, x1) in `image`'s pixels (half-open)."""
    boxes = []
    for vertices in regions.data:
        corners = np.array(
            [
                image.world_to_data(regions.data_to_world(vertex))[-2:]
                for vertex in np.asarray(vertices)
            ]
        )
        low, high = corners.min(axis=0), corners.max(axis=0)
        y0, x0 = (math.floor(v + 0.5) for v in low)
        y1, x1 = (math.ceil(v + 0.5) for v in high)
        boxes.append((y0, y1, x0, x1))
    return boxes


def run_finetune(
    pairs: list[FinetunePair], settings: FinetuneSettings
) -> Generator[Progress, None, Path | RunFailure]:
    """Worker body: load the base model, fine-tune it, save it as a new file (or say why not)."""
    from napari_cdal.engine.device import resolve_device
    from napari_cdal.engine.events import Progress
    from napari_cdal.engine.io.checkpoint import CheckpointError
    from napari_cdal.engine.training.finetune import FinetuneConfig, finetune, save_finetuned

    try:
        device = str(resolve_device(settings.device))
        model = load_model_cached(settings.base_model, device)
        defaults = FinetuneConfig()
        config = FinetuneConfig(
            steps=settings.steps,
            lr_g=settings.learning_rate,
            lr_d=settings.learning_rate * defaults.lr_d / defaults.lr_g,
        )
        for event in finetune(model, pairs, config, device, settings.image_mpp):
            if event.stage == "done":
                yield Progress("save", event.index, event.total)  # a last chance to cancel
                return save_finetuned(event.payload.model, settings.output)
            yield event
    except (CheckpointError, FileNotFoundError, ValueError, OSError) as exc:
        return RunFailure(str(exc))
    return RunFailure("the engine stopped without a result")


class PairRow(Container):
    """One (image, corrected labels, corrected regions) choice."""

    def __init__(self, viewer: napari.viewer.Viewer, number: int) -> None:
        super().__init__(labels=True)
        self._viewer = viewer
        self.image = ComboBox(label=f"image {number}", choices=lambda _: self._image_choices())
        self.labels = ComboBox(
            label="corrected labels",
            choices=lambda _: self._labels_choices(),
            tooltip="the Labels layer holding your corrected nuclei (0 = background)",
        )
        self.regions = ComboBox(
            label="corrected regions",
            choices=lambda _: self._regions_choices(),
            tooltip="a Shapes layer of rectangles around what you checked: "
            "only they are learned from",
        )
        self.extend([self.image, self.labels, self.regions])
        self.image.changed.connect(self._on_image_changed)
        self._on_image_changed(self.image.value)

    def _image_choices(self) -> list[tuple[str, Any]]:
        from napari.layers import Image

        return [
            (layer.name, layer)
            for layer in self._viewer.layers
            if isinstance(layer, Image) and TAG not in layer.metadata
        ]

    def _labels_choices(self) -> list[tuple[str, Any]]:
        from napari.layers import Labels

        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, Labels)]

    def _regions_choices(self) -> list[tuple[str, Any]]:
        from napari.layers import Shapes

        shapes = [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, Shapes)]
        return [("none: the whole image", WHOLE_IMAGE), *shapes]

    def _on_image_changed(self, layer: Image | None) -> None:
        mask = self.mask_of(layer)
        if mask is not None:
            self.labels.value = mask

    def mask_of(self, image: Image | None) -> Labels | None:
        """The image's mask from Segment (an edited one first, top-most first), else None."""
        if image is None:
            return None
        masks = [
            layer
            for layer in reversed(list(self._viewer.layers))
            if layer in self.labels.choices
            and (layer.metadata.get(TAG) or {}).get("image") == image.name
            and (layer.metadata.get(TAG) or {}).get("kind") == MASK
        ]
        edited = [layer for layer in masks if is_edited(layer)]
        named = [layer for layer in self.labels.choices if layer.name == f"{image.name} {MASK}"]
        candidates = edited + masks + named
        return candidates[0] if candidates else None


class FinetuneWidget(WorkerRun, Container):
    """Dock widget: corrected pairs, base model, settings, new name; Fine-tune, Cancel, Back."""

    unchanged_note = "no model written"

    run_finished = Signal(str)

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        from napari_cdal.engine.training.finetune import FinetuneConfig

        super().__init__(labels=True)
        self._viewer = napari_viewer
        self._auto_name = ""
        self._previous_model: str | None = None
        self.saved_model: Path | None = None
        self.notes: list[str] = []
        """What the last run told the user about their corrections (a binary mask split, say)."""

        self.pairs = Container(labels=False)
        self.add_pair_button = PushButton(text="Add another pair")
        self.remove_pair_button = PushButton(text="Remove the last pair", visible=False)
        self.base_model = ComboBox(label="base model", choices=lambda _: self._model_choices())
        self.device = ComboBox(label="device", choices=device_choices())
        self.mpp = mpp_spin_box(
            "the images' µm per pixel: from the first image's scale, else 0.25 (40x)"
        )
        self.steps = SpinBox(
            label="steps",
            min=1,
            max=10_000,
            value=FinetuneConfig().steps,
            tooltip="training steps; each draws a batch of patches from the corrected regions",
        )
        self.learning_rate = FloatSpinBox(
            label="learning rate",
            min=1e-5,
            max=1e-2,
            step=1e-5,
            value=DEFAULT_LEARNING_RATE,
            tooltip="the generator's learning rate (the discriminator's is half); "
            "a small one keeps what the model knew",
        )
        self.name = LineEdit(label="new model name")
        self.finetune_button = PushButton(text="Fine-tune")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.back_button = PushButton(text="Back to previous model", enabled=False)
        self.status = Label(value="")
        self.status.native.setWordWrap(True)
        self.extend(
            [
                self.pairs,
                self.add_pair_button,
                self.remove_pair_button,
                self.base_model,
                self.device,
                self.mpp,
                self.steps,
                self.learning_rate,
                self.name,
                self.finetune_button,
                self.cancel_button,
                self.back_button,
                self.status,
            ]
        )
        self.add_pair()

        self.add_pair_button.changed.connect(self.add_pair)
        self.remove_pair_button.changed.connect(self.remove_pair)
        self.base_model.changed.connect(self._suggest_name)
        self.name.changed.connect(self._check_name)
        self.finetune_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)
        self.back_button.changed.connect(self.back_to_previous_model)
        self._follow_viewer(napari_viewer)
        self._suggest_name()

    # ------------------------------------------------------------------ choices

    def _model_choices(self) -> list[tuple[str, str]]:
        from napari_cdal.models import list_models

        following = (
            [("as chosen in Segment", FOLLOW_SEGMENT)] if self._segment() is not None else []
        )
        return following + [(entry.label, str(entry.path)) for entry in list_models()]

    def _segment(self) -> Any:
        return docked_segment_widget(self._viewer)

    @property
    def pair_rows(self) -> list[PairRow]:
        """The pair rows, first to last."""
        return list(self.pairs)

    def add_pair(self, *_: Any) -> PairRow:
        """Add a pair row; the first defaults to the Segment widget's image and its mask."""
        row = PairRow(self._viewer, len(self.pairs) + 1)
        self.pairs.append(row)
        if len(self.pairs) == 1:
            segment = self._segment()
            image = segment.image.value if segment is not None else None
            if image is not None and image in row.image.choices:
                row.image.value = image
            row.image.changed.connect(self._on_first_image_changed)
            self._on_first_image_changed(row.image.value)
        self.remove_pair_button.visible = len(self.pairs) > 1
        return row

    def remove_pair(self, *_: Any) -> None:
        """Remove the last pair row (the first stays)."""
        if len(self.pairs) > 1:
            self.pairs.pop()
        self.remove_pair_button.visible = len(self.pairs) > 1

    def _on_first_image_changed(self, layer: Image | None) -> None:
        if layer is not None:
            set_mpp_from_layer(self.mpp, layer, self.status)
        self._suggest_name()

    def base_model_path(self) -> str | None:
        """The base model's file: the chosen one, or the Segment widget's when following it."""
        if self.base_model.value != FOLLOW_SEGMENT:
            return self.base_model.value
        segment = self._segment()
        return segment.selected_model_path() if segment is not None else None

    def _suggest_name(self, *_: Any) -> None:
        if self.name.value and self.name.value != self._auto_name:
            return
        base = self.base_model_path()
        image = self.pair_rows[0].image.value if self.pairs else None
        from napari_cdal.models import model_dir

        name = default_model_name(
            Path(base).name.removesuffix(MODEL_SUFFIX) if base else "",
            image.name if image is not None else "",
        )
        candidate, number = name, 2
        while (model_dir() / f"{candidate}{MODEL_SUFFIX}").exists():
            candidate, number = f"{name}-{number}", number + 1
        self._auto_name = candidate
        self.name.value = candidate

    def _check_name(self, *_: Any) -> str | None:
        from napari_cdal.models import model_dir

        problem = model_name_problem(self.name.value.strip(), model_dir())
        self.name.native.setStyleSheet(INVALID_STYLE if problem else "")
        self.name.tooltip = problem or f"saved as <name>{MODEL_SUFFIX} in {model_dir()}"
        return problem

    # ------------------------------------------------------------------ the run

    def gather_pairs(self) -> list[FinetunePair]:
        """The rows as engine pairs (labels copied, regions in image pixels); ValueError if bad."""
        from napari_cdal.engine.io.images import ImageError
        from napari_cdal.engine.training.corrections import FinetunePair

        pairs = []
        for number, row in enumerate(self.pair_rows, start=1):
            image, labels, regions = row.image.value, row.labels.value, row.regions.value
            if image is None:
                raise ValueError(f"pair {number}: choose an image (open one first)")
            if labels is None:
                raise ValueError(
                    f"pair {number}: choose the Labels layer with your corrections "
                    "(segment the image first, then correct its mask with the brush)"
                )
            first = self.pair_rows[0].image.value
            if not np.isclose(image_mpp(image), image_mpp(first)):
                raise ValueError(
                    f"pair {number}: {image.name!r} has {image_mpp(image):g} µm/px but "
                    f"{first.name!r} "
                    f"{image_mpp(first):g}; fine-tune images of one pixel size at a time"
                )
            try:
                pixels = image_pixels(image)
            except ImageError as exc:
                raise ValueError(f"pair {number}: {exc}") from exc
            data = labels.data[0] if getattr(labels, "multiscale", False) else labels.data
            boxes = None
            if regions is not WHOLE_IMAGE:
                boxes = layer_boxes(regions, image)
                if not boxes:
                    raise ValueError(
                        f"pair {number}: the Shapes layer {regions.name!r} has no rectangle; "
                        "draw one "
                        "around each corrected region, or choose 'none: the whole image'"
                    )
            pairs.append(FinetunePair(pixels, np.array(data, copy=True), boxes, image.name))
        return pairs

    def start(self, *_: Any) -> None:
        """Check the inputs and start fine-tuning in a worker thread (errors: a notification)."""
        from napari.qt.threading import create_worker
        from napari.utils import progress
        from napari.utils.notifications import show_error

        from napari_cdal.models import model_dir

        if self.running:
            return
        base = self.base_model_path()
        if base is None:
            show_error(
                "Fine-tune: no base model; choose one, or a model file in the Segment widget"
            )
            return
        if not Path(base).is_file():
            show_error(f"Fine-tune: model file not found: {base}")
            return
        name = self.name.value.strip().removesuffix(MODEL_SUFFIX)
        problem = model_name_problem(name, model_dir())
        if problem:
            show_error(f"Fine-tune: {problem}")
            return
        try:
            pairs = self.gather_pairs()
        except ValueError as exc:
            show_error(f"Fine-tune: {exc}")
            return
        settings = FinetuneSettings(
            base,
            model_dir() / f"{name}{MODEL_SUFFIX}",
            self.device.value,
            float(self.mpp.value),
            int(self.steps.value),
            float(self.learning_rate.value),
        )
        self._outcome = ""
        self.notes = []
        self._progress = progress(total=settings.steps, desc="cDAL: fine-tuning")
        self._worker = create_worker(run_finetune, pairs, settings, _start_thread=False)
        self._connect_worker()
        self.finetune_button.enabled = False
        self.cancel_button.enabled = True
        self.status.value = f"Fine-tuning {Path(base).stem} on {len(pairs)} pair(s)…"
        self._worker.start()

    def _on_step(self, event: Progress) -> None:
        with self._handling():
            if self._outcome or self._progress is None or event.stage not in ("note", "train", "save"):
                return
            if event.stage == "note":
                from napari.utils.notifications import show_info

                self.notes.append(event.payload)
                show_info(f"Fine-tune: {event.payload}")
                return
            if event.stage == "save":
                self.status.value = "Saving the new model…"
                return
            loss = event.payload.get("g") if isinstance(event.payload, dict) else None
            if loss is not None:
                self._progress.set_description(f"cDAL: fine-tuning, loss {loss:.4f}")
                self.status.value = (
                    f"Fine-tuning: step {event.index} of {event.total}, loss {loss:.4f}"
                )
            if self._progress.total != event.total:
                self._progress.total = event.total
            self._progress.update(event.index - self._progress.n)

    def _on_returned(self, result: Path | RunFailure) -> None:
        from napari.utils.notifications import show_error

        with self._handling():
            if isinstance(result, RunFailure):
                self._outcome = "failed"
                self.status.value = "Failed: no model written, the models are unchanged"
                show_error(f"Fine-tune: {result.message}")
                return
            late = self._outcome == "cancelled"
            self._outcome = "done"
            self.saved_model = Path(result)
            self._use_new_model(self.saved_model)
            if late:
                self.status.value = f"The run had ended before Cancel: {self.status.value}"

    def _use_new_model(self, path: Path) -> None:
        self.base_model.reset_choices()
        segment = self._segment()
        if segment is None:
            self.status.value = f"Saved {path.name} in {path.parent}; dock Segment to use it"
            return
        self._previous_model = segment.selected_model_path()
        segment.refresh_models(select=path)
        previous = (
            Path(self._previous_model).name.removesuffix(MODEL_SUFFIX)
            if self._previous_model
            else ""
        )
        self.back_button.text = f"Back to {previous}" if previous else "Back to previous model"
        self.back_button.enabled = self._previous_model is not None
        self.status.value = f"Saved {path.name} in {path.parent}; Segment now uses it"

    def back_to_previous_model(self, *_: Any) -> None:
        """Select in the Segment widget the model it used before the last fine-tune."""
        segment = self._segment()
        if segment is None or self._previous_model is None:
            return
        segment.refresh_models(select=self._previous_model)
        self.status.value = f"Segment uses {Path(self._previous_model).name} again"
        self._previous_model = None
        self.back_button.enabled = False

    def _finish(self) -> None:
        self._finish_pending = False
        self._progress.close()
        outcome = self._outcome or "cancelled"
        if outcome == "cancelled":
            self.status.value = "Cancelled: no model written, the models are unchanged"
        self._worker = self._progress = None
        self.finetune_button.enabled = True
        self.cancel_button.enabled = False
        if outcome == "done":
            self._auto_name = ""
            self.name.value = ""
            self._suggest_name()
        self.run_finished.emit(outcome)

    def _abandon_run(self, *_: Any) -> None:
        """The dock was closed mid-run: stop the worker (nothing is written)."""
        if self._worker is None:
            return
        self._disconnect_worker()
        self._progress.close()
        self._worker = self._progress = None
