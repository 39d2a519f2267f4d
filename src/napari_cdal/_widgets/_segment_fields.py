"""The Segment widget's fields of sampling, Whole slide and Review, each with its tooltip and its default taken from
where that default lives: the model's config (sampling steps, samples) or engine/defaults.py (the rest)."""

from __future__ import annotations

from magicgui.types import FileDialogMode
from magicgui.widgets import CheckBox, FileEdit, FloatSpinBox, PushButton, SpinBox

from napari_cdal._widgets._inputs import model_config
from napari_cdal.engine.defaults import DEFAULT_SEED, DEFAULT_THRESHOLD, DEFAULT_TISSUE, REVIEW_COUNT

MAX_SAMPLES = 64
"""The most samples (K) the field takes: each costs about one more run's time."""


def model_steps(path: str) -> tuple[int, int, int] | None:
    """(steps the model was trained with, its default sampling steps, its default samples K); None when unreadable."""
    config = model_config(path)
    return None if config is None else (config.diffusion_steps, config.sampling_steps, config.default_samples)


def default_sampling() -> tuple[int, int, int]:
    """model_steps of the bundled H&E model, the one Segment starts with; ModelConfig's defaults without one."""
    from napari_cdal.catalog import bundled_model_file
    from napari_cdal.engine.config import ModelConfig

    defaults = ModelConfig()
    bundled = model_steps(str(bundled_model_file()))
    return bundled or (defaults.diffusion_steps, defaults.sampling_steps, defaults.default_samples)


def sampling_fields() -> tuple[SpinBox, SpinBox, SpinBox, FloatSpinBox]:
    """The sampling steps, samples (K), seed and threshold fields, at the bundled model's and the engine's defaults."""
    diffusion_steps, steps, samples = default_sampling()
    sampling_steps = SpinBox(
        label="sampling steps",
        min=1,
        max=diffusion_steps,
        value=steps,
        tooltip="in how many denoising steps the mask forms, 1 up to the model's diffusion steps T; "
        "fewer is faster, more can be sharper. The step slider counts the steps done: the 'steps' layer "
        "shows the chain as sampled, from the noise x_T (0) to the mask x_0 (the last): the foreground "
        "channel, averaged over the samples and mapped from -1..1 to 0..1; 'estimates' shows x̂0, the model's "
        "guess of the finished mask, made at each step (1 on)",
    )
    samples_field = SpinBox(
        label="samples (for uncertainty)",
        min=1,
        max=MAX_SAMPLES,
        value=samples,
        tooltip="how many times the mask is drawn and averaged; with 2 or more, where the draws disagree "
        "becomes the 'uncertainty' layer. Each sample costs about one more run's time",
    )
    seed = SpinBox(
        label="seed",
        min=0,
        max=2**31 - 1,
        value=DEFAULT_SEED,
        tooltip="the starting noise: the same seed repeats a run exactly",
    )
    threshold = FloatSpinBox(
        label="threshold",
        min=0.01,
        max=0.99,
        step=0.05,
        value=DEFAULT_THRESHOLD,
        tooltip="how sure the model must be (0..1) to call a pixel nucleus; lower finds more and larger nuclei",
    )
    return sampling_steps, samples_field, seed, threshold


def slide_fields() -> tuple[FileEdit, CheckBox, PushButton]:
    """Whole slide's output folder, its tissue-only box and its button (shown for a slide only)."""
    output = FileEdit(
        label="slide output",
        mode=FileDialogMode.EXISTING_DIRECTORY,
        tooltip="folder for Whole slide's <slide>_labels.zarr (resumable) and <slide>_labels.tif; "
        "empty: the slide's own folder",
    )
    tissue_only = CheckBox(
        text="tissue only",
        value=DEFAULT_TISSUE == "auto",
        tooltip="Whole slide segments only the blocks with tissue, found on a low-resolution view (glass is "
        "skipped; the mask is written as <slide>_tissue.png); off: every block, glass too",
    )
    button = PushButton(
        text="Whole slide",
        tooltip="segment the slide file behind the image block by block in the background, "
        "showing the labels as they fill in; a second run resumes an unfinished one",
    )
    return output, tissue_only, button


def review_fields() -> tuple[SpinBox, PushButton]:
    """How many likely errors Review steps through, and its button (off until a result has some)."""
    count = SpinBox(
        label="review",
        min=1,
        max=1000,
        value=REVIEW_COUNT,
        tooltip="how many of the likely errors 'Review next' steps through, most likely first",
    )
    button = PushButton(
        text="Review next likely error",
        enabled=False,
        tooltip="centre the view on the next place the mask is most likely wrong: a doubtful nucleus, two "
        "nuclei drawn as one (merge) or a nucleus the mask missed, marked in the 'review · <image> · <model>' "
        "layer; the mask becomes the active layer with the nucleus (or, for a miss, a new id) ready for the brush",
    )
    return count, button
