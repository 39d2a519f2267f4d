"""Make the screenshots of docs/slides.md: a pyramidal slide in napari, Segment on the field of view, Whole slide.

Needs a display; on a headless machine run it under a virtual X server:

    xvfb-run -a .venv/bin/python docs/slide_screenshots.py [--model PATH] [--out docs/images]

The slide is a 2 x 2 mosaic of the bundled sample tile written as a pyramidal tiled TIFF in a
temporary folder (0.25 µm/px, 2000 x 2000 px); it is opened through the plugin's reader and the
real widget is clicked. Overwrites 12_slide_field_of_view.png and 13_whole_slide.png in --out.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from screenshots import docs_viewer, settle, shoot

FIELD_CENTRE_PX = (700, 1000)  # (row, column) of the mosaic the field of view is centred on
FIELD_ZOOM = 6.0


def pyramid_mosaic(path: Path, mpp: float = 0.25) -> Path:
    """A 2 x 2 mosaic of the sample tile as a pyramidal tiled TIFF (levels as SubIFDs) at `mpp` µm/px."""
    import numpy as np
    import tifffile

    from napari_cdal.engine.io.images import read_image
    from napari_cdal.sample_data import sample_tile_path

    tile = read_image(sample_tile_path())[..., :3]
    image = np.concatenate([np.concatenate([tile, tile[:, ::-1]], 1), np.concatenate([tile[::-1], tile], 1)], 0)
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for k in range(3):
            options = {"subifds": 2} if k == 0 else {"subfiletype": 1}
            tif.write(
                image[:: 2**k, :: 2**k],
                tile=(256, 256),
                photometric="rgb",
                compression="jpeg",
                resolution=(1e4 / (mpp * 2**k),) * 2,
                resolutionunit="CENTIMETER",
                **options,
            )
    return path


def wait(widget, button) -> None:
    """Click a run button and wait for the run to end (exit when it did not finish)."""
    outcomes: list[str] = []
    widget.run_finished.connect(outcomes.append)
    button.native.click()
    while not outcomes:
        settle(0.05)
    widget.run_finished.disconnect(outcomes.append)
    if outcomes[0] != "done":
        sys.exit(f"the run ended as {outcomes[0]!r}: {widget.status.value}")
    print(widget.status.value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model file (default: the bundled model)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "images"), help="PNG folder")
    args = parser.parse_args(argv)

    from napari_cdal._widgets._layers import layer_name
    from napari_cdal._widgets._names import model_stem
    from napari_cdal._widgets._review import viewer_camera
    from napari_cdal._widgets.segment import OTHER_FILE

    out = Path(args.out).resolve()
    # a fixed, plain folder name: the widget shows the output folder, and a random one would look odd
    folder = Path(tempfile.gettempdir()) / "napari-cdal-slide-demo"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    try:
        slide = pyramid_mosaic(Path(folder) / "mosaic.tif")
        viewer = docs_viewer()
        (layer,) = viewer.open(slide, plugin="napari-cdal")
        _, widget = viewer.window.add_plugin_dock_widget("napari-cdal", "Segment")
        if args.model is not None:
            widget.model.value = OTHER_FILE
            widget.model_file.value = Path(args.model)
        settle(1.0)  # the window's first draw fits the view: place the camera after it
        viewer_camera(viewer).center = (FIELD_CENTRE_PX[0] * 0.25, FIELD_CENTRE_PX[1] * 0.25)
        viewer_camera(viewer).zoom = FIELD_ZOOM
        wait(widget, widget.segment_button)
        # the result's step stacks add an axis, which moves the camera: show the field again, a little wider
        viewer_camera(viewer).center = (FIELD_CENTRE_PX[0] * 0.25, FIELD_CENTRE_PX[1] * 0.25)
        viewer_camera(viewer).zoom = FIELD_ZOOM * 0.7
        shoot(viewer, out, "12_slide_field_of_view.png")

        viewer.layers[layer_name(layer.name, "mask", model_stem(widget.selected_model_path()))].visible = False
        widget.slide_output.value = folder / "out"
        wait(widget, widget.slide_button)
        viewer.reset_view()
        shoot(viewer, out, "13_whole_slide.png")
        viewer.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
