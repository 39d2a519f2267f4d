"""Make the screenshots of docs/user_guide.md: the Segment widget on the sample tile, step by step.

Needs a display; on a headless machine run it under a virtual X server:

    xvfb-run -a .venv/bin/python docs/screenshots.py [--model PATH] [--out docs/images]

It uses the bundled model unless --model is given, drives the real widget (clicks Segment and
waits for the worker), overwrites the PNGs in --out and prints the seconds from click to mask.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

WINDOW = (1500, 950)
ZOOM_CENTRE_PX = (300, 280)  # (row, column) of the sample tile shown in the close-ups
ZOOM = 6.0


def settle(seconds: float = 0.3) -> None:
    """Let Qt draw (and the worker's signals arrive) for a moment."""
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        QApplication.processEvents()
        time.sleep(0.01)


def docs_viewer():
    """A napari viewer as every docs script shoots it: titled napari-cdal, at the WINDOW size."""
    import napari

    viewer = napari.Viewer(title="napari-cdal")
    viewer.window.resize(*WINDOW)
    return viewer


def shoot(viewer, out: Path, name: str, canvas_only: bool = False) -> None:
    """Save a screenshot as a 256-colour PNG (a fifth of the size of a full-colour one)."""
    from PIL import Image

    settle()
    pixels = viewer.screenshot(canvas_only=canvas_only, flash=False)
    picture = Image.fromarray(pixels[..., :3]).quantize(colors=256)
    picture.save(out / name, optimize=True)
    print(f"wrote {out / name}")


def run_and_wait(widget, viewer, out: Path, live_shot: str | None) -> None:
    """Click Segment, optionally shoot the live preview once, and wait for the run to end."""
    outcomes: list[str] = []
    widget.run_finished.connect(outcomes.append)
    widget.segment_button.native.click()
    while not outcomes:
        settle(0.05)
        previews = [layer for layer in viewer.layers if "(running)" in layer.name]
        if live_shot and previews and previews[0].data[0].any():
            shoot(viewer, out, live_shot)
            live_shot = None
    widget.run_finished.disconnect(outcomes.append)
    if outcomes[0] != "done":
        sys.exit(f"the run ended as {outcomes[0]!r}: {widget.status.value}")


def show_only(viewer, image_name: str, *visible: str) -> None:
    for layer in viewer.layers:
        layer.visible = layer.name == image_name or layer.name in visible


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model file (default: the bundled model)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "images"), help="PNG folder")
    parser.add_argument("--samples", type=int, default=4, help="K for the uncertainty screenshot")
    args = parser.parse_args(argv)

    from napari_cdal._widgets._layers import find_result_layer
    from napari_cdal._widgets._names import model_stem
    from napari_cdal._widgets._review import viewer_camera
    from napari_cdal._widgets.segment import OTHER_FILE
    from napari_cdal.catalog import bundled_model_file
    from napari_cdal.sample_data import SAMPLE_NAME

    if args.model is None and not bundled_model_file().is_file():
        sys.exit(f"no bundled model at {bundled_model_file()}; give one with --model PATH")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    viewer = docs_viewer()
    viewer.open_sample("napari-cdal", "monuseg")
    _, widget = viewer.window.add_plugin_dock_widget("napari-cdal", "Segment")
    if args.model is not None:
        widget.model.value = OTHER_FILE
        widget.model_file.value = Path(args.model)
    shoot(viewer, out, "01_sample_and_widget.png")
    model = model_stem(widget.selected_model_path())

    def results(kind: str) -> str:  # result layers are found by their tag: their kind, the image and the model
        return find_result_layer(viewer, SAMPLE_NAME, kind, model).name

    run_and_wait(widget, viewer, out, "02_running.png")
    first_seconds = widget.last_seconds
    run_and_wait(widget, viewer, out, None)  # again, with the model already loaded
    viewer.reset_view()
    shoot(viewer, out, "03_mask_overlay.png")

    widget_seconds = widget.last_seconds
    mask = viewer.layers[results("mask")]
    scale = viewer.layers[SAMPLE_NAME].scale
    viewer_camera(viewer).center = (ZOOM_CENTRE_PX[0] * scale[0], ZOOM_CENTRE_PX[1] * scale[1])
    viewer_camera(viewer).zoom = ZOOM
    shoot(viewer, out, "04_mask_contours_zoom.png", canvas_only=True)
    mask.contour = 0
    shoot(viewer, out, "05_mask_filled_zoom.png", canvas_only=True)
    mask.contour = 1

    # the full chain of the model's T shows how the mask forms
    default_steps = widget.sampling_steps.value
    widget.sampling_steps.value = widget.sampling_steps.max
    run_and_wait(widget, viewer, out, None)
    viewer.reset_view()
    show_only(viewer, SAMPLE_NAME, results("steps"))
    viewer.layers[results("steps")].opacity = 1.0
    # the step axis counts the steps done (x_T at 0): x_1, after three of four steps, is the first
    # plane where the nuclei stand out of the noise on a whole tile
    viewer.dims.set_point(0, viewer.layers[results("steps")].data.shape[0] - 2)
    shoot(viewer, out, "06_steps_first.png")
    viewer.dims.set_point(0, viewer.layers[results("steps")].data.shape[0] - 1)  # x_0
    shoot(viewer, out, "07_steps_last.png")

    show_only(viewer, SAMPLE_NAME, results("estimates"))
    viewer.layers[results("estimates")].opacity = 1.0
    shoot(viewer, out, "07b_estimates_last.png")

    widget.sampling_steps.value = default_steps
    widget.samples.value = args.samples
    run_and_wait(widget, viewer, out, None)
    # the attention of the last step: D's belief that each pixel of the final mask is wrong
    show_only(viewer, SAMPLE_NAME, results("attention"), results("mask"))
    viewer.dims.set_point(0, viewer.layers[results("attention")].data.shape[0])
    shoot(viewer, out, "08_attention.png")
    show_only(viewer, "", results("attention"), results("mask"))  # alone, the mask's outlines for reference
    viewer_camera(viewer).center = (ZOOM_CENTRE_PX[0] * scale[0], ZOOM_CENTRE_PX[1] * scale[1])
    viewer_camera(viewer).zoom = ZOOM
    shoot(viewer, out, "08b_attention_alone.png", canvas_only=True)
    viewer.reset_view()
    show_only(viewer, SAMPLE_NAME, results("uncertainty"), results("mask"))
    viewer.layers[results("mask")].opacity = 0.4
    shoot(viewer, out, "09_uncertainty.png")
    viewer_camera(viewer).center = (ZOOM_CENTRE_PX[0] * scale[0], ZOOM_CENTRE_PX[1] * scale[1])
    viewer_camera(viewer).zoom = ZOOM
    shoot(viewer, out, "10_uncertainty_zoom.png", canvas_only=True)

    # Review: the first likely error, centred, marked in the review layer, selected in the mask, ready for the brush
    viewer.layers[results("mask")].opacity = 0.7
    widget.review_button.native.click()
    settle()
    shoot(viewer, out, "11_review.png")

    print(
        f"click to mask on the sample tile at the defaults: {first_seconds:.1f} s on the first click "
        f"(loads the model), {widget_seconds:.1f} s on the next"
    )
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
