"""The Fine-tune dock widget: teaches a model the user's corrected masks in a napari thread_worker.

The widget only gathers (image, corrected Labels[, Shapes of corrected regions]) pairs and settings and starts a
FinetuneRun (_finetune_run.py), which runs engine.training.finetune. The new model is written atomically into the
user's model folder at the end of the run, so a cancel or an error leaves no file and every existing model
untouched. The run ends with the engine's before → after check on the held-back part of the corrections; Segment
switches to the new model only when it scored better there. While it runs, Segment waits (the CPU is taken).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import ComboBox, Container, FloatSpinBox, LineEdit, PushButton, SpinBox

from napari_cdal._widgets._docked import DockedSegment, docked_segment_widget
from napari_cdal._widgets._fields import (
    cancel_button,
    device_combo,
    fit_labels,
    keep_narrow,
    mpp_spin_box,
    progress_bar,
    set_mpp_from_layer,
    status_label,
    tab_with_sibling,
)
from napari_cdal._widgets._finetune_run import Finetuned, FinetuneRun, FinetuneSettings, starting_status
from napari_cdal._widgets._inputs import is_volume_layer, model_config, model_file_choices, model_fit_problem
from napari_cdal._widgets._names import default_model_name, free_model_name, model_name_problem, model_stem
from napari_cdal._widgets._pairs import PairRow, engine_pairs
from napari_cdal._widgets._worker import RunWidget
from napari_cdal.catalog import MODEL_SUFFIX
from napari_cdal.engine.config import FINETUNE_CONFIG

if TYPE_CHECKING:
    import napari  # type: ignore[import-untyped]
    from napari.layers import Image  # type: ignore[import-untyped]

    from napari_cdal.engine.training.corrections import FinetunePair, VolumeCorrection

FOLLOW_SEGMENT = "<segment>"
DEFAULT_ITERATIONS: int = FINETUNE_CONFIG.iterations
DEFAULT_LEARNING_RATE: float = FINETUNE_CONFIG.lr_g
INVALID_STYLE = "background-color: #7a2a2a;"


class FinetuneWidget(RunWidget):
    """Dock widget: corrected pairs, base model, settings, new name; Fine-tune, Cancel, Back."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(napari_viewer)
        self._auto_name = ""
        self._previous_model: str | None = None
        self.saved_model: Path | None = None
        self.report = ""
        """The last run's check on the held-back corrections, in plain words."""
        self.notes: list[str] = []
        """What the last run told the user about their corrections (a binary mask split, say)."""

        self.pairs: Container[PairRow] = Container(labels=False)
        self.pairs.margins = (0, 0, 0, 0)  # the rows' labels line up with the widget's own, no wider
        self.add_pair_button = PushButton(
            text="Add another pair", tooltip="learn from one more corrected image in the same run"
        )
        self.remove_pair_button = PushButton(
            text="Remove the last pair", visible=False, tooltip="forget the last pair (the first stays)"
        )
        self.base_model = ComboBox(
            label="base model",
            choices=lambda _: self._model_choices(),
            tooltip="the model to start from: the one Segment uses, or one of your models; "
            "it is only read, never changed",
        )
        self.device = device_combo()
        self.mpp = mpp_spin_box("the images' µm per pixel: from the first image's scale, else 0.25 (40x)")
        self.iterations = SpinBox(
            label="iterations",
            min=1,
            max=10_000,
            value=DEFAULT_ITERATIONS,
            tooltip="how many learning steps: each learns from a few patches cut from the corrected regions; "
            "more learn more of your corrections and take longer",
        )
        self.learning_rate = FloatSpinBox(
            label="learning rate",
            min=1e-5,
            max=1e-2,
            step=1e-5,
            value=DEFAULT_LEARNING_RATE,
            tooltip="how far each learning step moves the model's weights: larger learns your corrections "
            "faster but may forget what the model knew; the default is a cautious 0.0001",
        )
        self.model_name = LineEdit(label="new model name", tooltip="the new model's file name in your model folder")
        self.finetune_button = PushButton(
            text="Fine-tune",
            tooltip="teach the base model your corrections and save it as a new model; "
            "at the end it is checked on a held-back part of them",
        )
        self.cancel_button = cancel_button("fine-tuning", "stop fine-tuning within about a second; no model is written")
        self.back_button = PushButton(
            text="Back to previous model",
            enabled=False,
            tooltip="let Segment use the model it used before the last fine-tune",
        )
        self.progress_bar = progress_bar()
        self.status = status_label()
        self.extend(
            [
                self.pairs,
                self.add_pair_button,
                self.remove_pair_button,
                self.base_model,
                self.device,
                self.mpp,
                self.iterations,
                self.learning_rate,
                self.model_name,
                self.finetune_button,
                self.cancel_button,
                self.back_button,
                self.progress_bar,
                self.status,
            ]
        )
        self.add_pair()

        self.add_pair_button.changed.connect(self.add_pair)
        self.remove_pair_button.changed.connect(self.remove_pair)
        self.base_model.changed.connect(self._suggest_name)
        self.model_name.changed.connect(self._check_name)
        self.finetune_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)
        self.back_button.changed.connect(self.back_to_previous_model)
        self._follow_viewer()
        segment = self._segment()
        if segment is not None:  # the suggested name follows the model Segment uses
            segment.model.changed.connect(self._suggest_name)
            segment.model_file.changed.connect(self._suggest_name)
        tab_with_sibling(self)
        self._suggest_name()

    # ------------------------------------------------------------------ choices

    def _model_choices(self) -> list[tuple[str, str]]:
        following = [("as chosen in Segment", FOLLOW_SEGMENT)] if self._segment() is not None else []
        return following + model_file_choices()

    def _segment(self) -> DockedSegment | None:
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
        keep_narrow(row)
        fit_labels(self)
        return row

    def remove_pair(self, *_: Any) -> None:
        """Remove the last pair row (the first stays)."""
        if len(self.pairs) > 1:
            self.pairs.pop()
        self.remove_pair_button.visible = len(self.pairs) > 1

    def _on_first_image_changed(self, layer: Image | None) -> None:
        self.mpp.visible = layer is None or not is_volume_layer(layer)  # a volume is not resampled: no µm/px
        if layer is not None:
            set_mpp_from_layer(self.mpp, layer, self.status)
        self._suggest_name()

    def base_model_path(self) -> str | None:
        """The base model's file: the chosen one, or the Segment widget's when following it."""
        chosen = self.base_model.value
        if chosen != FOLLOW_SEGMENT:
            return None if chosen is None else str(chosen)
        segment = self._segment()
        return segment.selected_model_path() if segment is not None else None

    def _suggest_name(self, *_: Any) -> None:
        if self.model_name.value and self.model_name.value != self._auto_name:
            return
        from napari_cdal.catalog import model_dir

        image = self.pair_rows[0].image.value if self.pairs else None
        name = default_model_name(model_stem(self.base_model_path()), image.name if image is not None else "")
        candidate = free_model_name(name, model_dir())
        self._auto_name = candidate
        self.model_name.value = candidate

    def _check_name(self, *_: Any) -> str | None:
        from napari_cdal.catalog import model_dir

        problem = model_name_problem(self.model_name.value.strip(), model_dir())
        self.model_name.native.setStyleSheet(INVALID_STYLE if problem else "")
        self.model_name.tooltip = problem or f"saved as <name>{MODEL_SUFFIX} in {model_dir()}"
        return problem

    # ------------------------------------------------------------------ the run

    def start_buttons(self) -> list[PushButton]:
        """Fine-tune."""
        return [self.finetune_button]

    def gather_pairs(self) -> list[FinetunePair] | list[VolumeCorrection]:
        """The rows as engine pairs (labels copied, regions in image pixels); ValueError if bad."""
        return engine_pairs(self.pair_rows)

    def start(self, *_: Any) -> None:
        """Check the inputs and start fine-tuning in a worker thread (errors: a notification)."""
        from napari.utils.notifications import show_error  # type: ignore[import-untyped]

        from napari_cdal.catalog import model_dir
        from napari_cdal.engine.checks import check_output_folder

        if self.running:
            return
        base = self.base_model_path()
        if base is None:
            show_error("Fine-tune: no base model; choose one, or a model file in the Segment widget")
            return
        if not Path(base).is_file():
            show_error(f"Fine-tune: model file not found: {base}")
            return
        name = self.model_name.value.strip().removesuffix(MODEL_SUFFIX)
        problem = model_name_problem(name, model_dir())
        if problem:
            show_error(f"Fine-tune: {problem}")
            return
        try:  # the model folder must take the new model before any training is spent on it
            check_output_folder(model_dir(), "the model folder")
        except ValueError as exc:
            show_error(f"Fine-tune: {exc}")
            return
        config = model_config(base)
        problems = [
            model_fit_problem(row.image.value, config, Path(base).stem)
            for row in self.pair_rows
            if row.image.value is not None
        ]
        if any(problems):
            show_error(f"Fine-tune: {next(p for p in problems if p)}")
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
            int(self.iterations.value),
            float(self.learning_rate.value),
        )
        self.notes = []
        whole = [row.image.value.name for row in self.pair_rows if row.learns_whole_image]
        warning = f" ⚠ learning from the whole of {', '.join(whole)}" if whole else ""
        status = starting_status(Path(base).stem, pairs) + warning
        self.launch(FinetuneRun(self, pairs, settings), status, total=settings.iterations)
        segment = self._segment()
        if segment is not None:
            segment.hold("waiting: a fine-tune is using the CPU; Segment again when it ends, or Cancel fine-tuning")

    def use_new_model(self, result: Finetuned) -> None:
        """Offer the new model; Segment switches to it only when the acceptance rule finds it better beyond noise."""
        path = result.path
        self.base_model.reset_choices()
        segment = self._segment()
        check = f"{result.report[0].upper()}{result.report[1:]}."
        if segment is None:
            self.status.value = f"Saved {path.name} in {path.parent}. {check} Dock Segment to use it"
            return
        if result.improved is False:
            self.status.value = (
                f"{check} So Segment keeps "
                f"{model_stem(segment.selected_model_path())}; {path.name} is saved in "
                f"{path.parent} if you want to try it"
            )
            return
        self._previous_model = segment.selected_model_path()
        segment.refresh_models(select=path)
        previous = model_stem(self._previous_model)
        self.back_button.text = f"Back to {previous}" if previous else "Back to previous model"
        self.back_button.enabled = self._previous_model is not None
        self.status.value = f"{check} Saved {path.name} in {path.parent}; Segment now uses it"

    def back_to_previous_model(self, *_: Any) -> None:
        """Select in the Segment widget the model it used before the last fine-tune."""
        segment = self._segment()
        if segment is None or self._previous_model is None:
            return
        segment.refresh_models(select=self._previous_model)
        self.status.value = f"Segment uses {Path(self._previous_model).name} again"
        self._previous_model = None
        self.back_button.enabled = False
        self._suggest_name()

    def _abandon_run(self, *_: Any) -> None:
        """The dock was closed: stop a run in progress and give Segment back the CPU."""
        segment = self._segment()
        if segment is not None and self.running:
            segment.hold(None)
        super()._abandon_run()

    def after_run(self, outcome: str) -> None:
        """Give Segment back the CPU; after a new model, suggest a fresh name for the next one."""
        segment = self._segment()
        if segment is not None:
            segment.hold(None)
        if outcome == "done":
            self._auto_name = ""
            self.model_name.value = ""
            self._suggest_name()
