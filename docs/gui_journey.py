"""Drive a pathologist's whole journey through the real widgets, write its screenshots and a timing table.

Needs a display; on a headless machine run it under a virtual X server:

    xvfb-run -a .venv/bin/python docs/gui_journey.py [--iterations 150] [--out docs/images]

The journey: open the sample tile; Segment and Segment at more steps and samples; correct the mask
with the brush and the eraser; draw a rectangle around the corrections; Fine-tune; segment with the
new model (its layers beside the first); Back; then Cancel in both widgets. Beside each widget
timing it times the engine alone on the same input in the same process, so a busy machine inflates
both alike. The new model goes to a temporary model folder, never the user's. Writes
journey_*.png into --out and journey_timings.json / .md beside this script; prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

from screenshots import docs_viewer, settle, shoot

TICK_MS = 10
REPEATS = 5
"""Runs of each Segment click that is timed (in the widget and alone); the table gives their medians."""
HERE = Path(__file__).parent


class FreezeMeter:
    """A 10 ms Qt timer: the longest gap between its ticks is the longest the GUI thread was busy."""

    def __init__(self) -> None:
        from qtpy.QtCore import QTimer

        self.longest = 0.0
        self._last = time.perf_counter()
        self._timer = QTimer()
        self._timer.setInterval(TICK_MS)
        self._timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        self.longest = max(self.longest, now - self._last - TICK_MS / 1000)
        self._last = now

    def __enter__(self) -> FreezeMeter:
        self._last = time.perf_counter()
        self._timer.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._timer.stop()


def click_and_wait(widget, button, cancel_after: float | None = None) -> tuple[str, float | None]:
    """Click `button`, maybe Cancel `cancel_after` s after the first step; (outcome, s from Cancel to the end)."""
    outcomes: list[str] = []
    widget.run_finished.connect(outcomes.append)
    button.native.click()
    cancelled_at = None
    started = time.perf_counter()
    while not outcomes:
        settle(0.02)
        stepped = widget._progress is not None and widget._progress.n > 0
        if (
            cancel_after is not None
            and cancelled_at is None
            and stepped
            and time.perf_counter() - started > cancel_after
        ):
            cancelled_at = time.perf_counter()
            widget.cancel_button.native.click()
    widget.run_finished.disconnect(outcomes.append)
    return outcomes[0], None if cancelled_at is None else time.perf_counter() - cancelled_at


def engine_segment_seconds(widget, image) -> float:
    """Seconds the engine alone takes on `image` with the widget's settings and runtime (model already loaded)."""
    from napari_cdal._widgets._model_cache import sampling_model_cached
    from napari_cdal.engine.events import run_to_end
    from napari_cdal.engine.segment.image import segment_image

    model = sampling_model_cached(widget.selected_model_path(), "cpu")
    started = time.perf_counter()
    run_to_end(
        segment_image(
            model,
            image,
            image_mpp=float(widget.mpp.value),
            sampling_steps=int(widget.sampling_steps.value),
            samples=int(widget.samples.value),
            seed=int(widget.seed.value),
            threshold=float(widget.threshold.value),
        )
    )
    return time.perf_counter() - started


def engine_finetune_seconds(finetune) -> float:
    """Seconds the engine's finetune alone takes on the widget's pairs and settings."""
    from napari_cdal._widgets._model_cache import load_model_cached
    from napari_cdal.engine.defaults import FINETUNE_D_LR_RATIO
    from napari_cdal.engine.events import run_to_end
    from napari_cdal.engine.training.finetune import finetune as engine_finetune
    from napari_cdal.engine.training.finetune import finetune_config

    model = load_model_cached(finetune.base_model_path(), "cpu")
    rate = float(finetune.learning_rate.value)
    config = finetune_config(iterations=int(finetune.iterations.value), lr_g=rate, lr_d=rate * FINETUNE_D_LR_RATIO)
    started = time.perf_counter()
    run_to_end(engine_finetune(model, finetune.gather_pairs(), config, "cpu", float(finetune.mpp.value)))
    return time.perf_counter() - started


def timed_segment_clicks(widget, image, freezes: list[float]) -> dict[str, list[float]]:
    """Click Segment REPEATS times, each timed in the widget and then alone; each run's longest freeze to `freezes`."""
    widget_s, engine_s = [], []
    for _ in range(REPEATS):
        with FreezeMeter() as freeze:
            click_and_wait(widget, widget.segment_button)
        freezes.append(freeze.longest)
        widget_s.append(round(widget.last_seconds, 3))
        engine_s.append(round(engine_segment_seconds(widget, image), 3))
    return {"widget_s": widget_s, "engine_s": engine_s}


def load_now() -> str:
    """The 1-minute load average and the number of CPUs, as a line for the table."""
    return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"


def table(rows: list[tuple[str, float, float | None]], load: str) -> str:
    """The timings as a markdown table: what, in the widget, the engine alone."""
    lines = [
        f"Measured by `docs/gui_journey.py` under Xvfb ({load}).",
        "",
        "| step | in the widget (s) | engine alone (s) |",
        "|---|---:|---:|",
    ]
    for what, widget_s, engine_s in rows:
        lines.append(f"| {what} | {widget_s:.2f} | {'' if engine_s is None else f'{engine_s:.2f}'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=150, help="fine-tune iterations (fewer on a busy machine)")
    parser.add_argument("--out", default=str(HERE / "images"), help="PNG folder")
    args = parser.parse_args(argv)
    os.environ["NAPARI_CDAL_MODEL_DIR"] = tempfile.mkdtemp(prefix="napari-cdal-journey-")

    import numpy as np

    from napari_cdal._widgets._layers import MASK
    from napari_cdal._widgets._names import model_stem
    from napari_cdal.layer_metadata import TAG
    from napari_cdal.sample_data import SAMPLE_NAME

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    viewer = docs_viewer()
    viewer.open_sample("napari-cdal", "monuseg")
    segment_dock, segment = viewer.window.add_plugin_dock_widget("napari-cdal", "Segment")
    finetune_dock, finetune = viewer.window.add_plugin_dock_widget("napari-cdal", "Fine-tune")
    settle(0.5)
    image = viewer.layers[SAMPLE_NAME]
    pixels = np.asarray(image.data)
    rows: list[tuple[str, float, float | None]] = []
    base = model_stem(segment.selected_model_path())

    def masks() -> list:
        return [layer for layer in viewer.layers if (layer.metadata.get(TAG) or {}).get("kind") == MASK]

    with FreezeMeter() as freeze:
        click_and_wait(segment, segment.segment_button)  # loads the model; its first run adds four layers
    first_freezes = [freeze.longest]
    steps_at_defaults = segment.sampling_steps.value, segment.samples.value
    freezes: list[float] = []
    clicks = timed_segment_clicks(segment, pixels, freezes)
    each = {"defaults": clicks}
    rows.append(
        (
            f"Segment at the defaults, again: click to mask (median of {REPEATS})",
            median(clicks["widget_s"]),
            median(clicks["engine_s"]),
        )
    )
    shoot(viewer, out, "journey_1_segment.png")

    segment.sampling_steps.value, segment.samples.value = segment.sampling_steps.max, 4
    clicks = each["more_steps_and_samples"] = timed_segment_clicks(segment, pixels, freezes)
    rows.append(
        (
            f"Segment at {segment.sampling_steps.value} steps, 4 samples (median of {REPEATS})",
            median(clicks["widget_s"]),
            median(clicks["engine_s"]),
        )
    )

    mask = masks()[-1]  # correct: erase one nucleus, paint one in, like the eraser and the brush
    nucleus = int(mask.data[mask.data > 0][0])
    y, x = (int(v.mean()) for v in np.nonzero(mask.data == nucleus))
    mask.brush_size = 14
    mask.paint((y, x), 0)
    mask.paint((min(y + 40, pixels.shape[0] - 8), min(x + 40, pixels.shape[1] - 8)), int(mask.data.max()) + 1)
    top, left = max(0, y - 100), max(0, x - 100)
    corners = np.array([[top, left], [top + 260, left + 260]], float) * np.asarray(image.scale[-2:])
    viewer.add_shapes(
        [corners],
        shape_type="rectangle",
        name="checked",
        edge_color="yellow",
        face_color="transparent",
        units=image.units,
    )
    viewer.layers.selection.active = mask
    mask.mode = "paint"
    row = finetune.pair_rows[0]
    row.corrected_labels.value = mask
    finetune.iterations.value = args.iterations
    finetune_dock.raise_()  # the user turns to the Fine-tune tab
    settle()
    shoot(viewer, out, "journey_2_corrected.png")

    with FreezeMeter() as freeze:
        click_and_wait(finetune, finetune.finetune_button)
    freezes.append(freeze.longest)
    finetune_seconds = finetune.last_seconds
    print(finetune.status.value)
    shoot(viewer, out, "journey_3_finetuned.png")

    new_model = finetune.saved_model
    segment.refresh_models(select=new_model)
    segment_dock.raise_()
    segment.sampling_steps.value, segment.samples.value = steps_at_defaults
    with FreezeMeter() as freeze:
        click_and_wait(segment, segment.segment_button)  # its first run: four new layers
    first_freezes.append(freeze.longest)
    rows.append(
        (
            "Segment with the new model (its first run, loading it): click to mask",
            segment.last_seconds,
            engine_segment_seconds(segment, pixels),
        )
    )
    print("side by side:", [layer.name for layer in masks()])
    shoot(viewer, out, "journey_4_side_by_side.png")
    if finetune.back_button.enabled:
        finetune.back_button.native.click()
    settle()

    _, segment_cancel = click_and_wait(segment, segment.segment_button, cancel_after=0.0)
    finetune.model_name.value = f"{base}-journey-cancelled"
    _, finetune_cancel = click_and_wait(finetune, finetune.finetune_button, cancel_after=0.0)
    shoot(viewer, out, "journey_5_after_cancel.png")

    load = load_now()
    rows.append(
        (
            f"Fine-tune, {args.iterations} iterations, click to saved",
            finetune_seconds,
            engine_finetune_seconds(finetune),
        )
    )
    rows.append(("Cancel in Segment: click to stopped", segment_cancel or 0.0, None))
    rows.append(("Cancel in Fine-tune: click to stopped", finetune_cancel or 0.0, None))
    rows.append(("longest canvas freeze: a model's first run on the image (adds its layers)", max(first_freezes), None))
    rows.append(("longest canvas freeze: later runs and the fine-tune", max(freezes), None))
    markdown = table(rows, load)
    (HERE / "journey_timings.md").write_text(markdown, encoding="utf-8")
    (HERE / "journey_timings.json").write_text(
        json.dumps(
            {
                "load": load,
                "rows": [
                    {"step": w, "widget_s": round(a, 3), "engine_s": None if b is None else round(b, 3)}
                    for w, a, b in rows
                ],
                "each_run": each,
                "finetune_status": finetune.report,
            },
            indent=1,
        ),
        encoding="utf-8",
    )
    print(markdown)
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
