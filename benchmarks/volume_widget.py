"""Seconds to segment an MRI volume in the Segment widget against `napari-cdal segment`, in one run.

    xvfb-run -a python benchmarks/volume_widget.py [--volume VOL.nii.gz] [--repeats 5] [--threads N] [--json FILE]

Each repeat runs the command line in this process (`napari_cdal.cli.main(["segment", VOL, ...])`,
its wall time: loading the model, segmenting, writing the labels) and then clicks Segment in a
napari viewer on the same volume (the widget's seconds from click to labels), interleaved so that a
busy machine slows both alike. The widget's first click, which loads the model, is reported apart.
Defaults: the bundled sample volume, the bundled volume model at its defaults. Needs a display
(Xvfb on a headless machine).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import display_path, machine, table, write_json

from napari_cdal.cli import main as cli_main
from napari_cdal.engine.defaults import DEFAULT_VOLUME_MODEL
from napari_cdal.engine.method.model import resolve_model_path
from napari_cdal.sample_data import sample_volume_path


def cli_seconds(volume: Path, out: Path, threads: int | None) -> float:
    """Wall seconds of one `napari-cdal segment VOL --out OUT --overwrite`, run in this process."""
    extra = ["--threads", str(threads)] if threads else []
    started = time.perf_counter()
    code = cli_main(["segment", str(volume), "--out", str(out), "--overwrite", *extra])
    seconds = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"napari-cdal segment exited with {code}")
    return seconds


def widget_click(app, widget) -> float:
    """Click Segment, wait for the run to end, return the widget's seconds from click to labels."""
    outcomes: list[str] = []
    widget.run_finished.connect(outcomes.append)
    widget.segment_button.native.click()
    while not outcomes:
        app.processEvents()
        time.sleep(0.005)
    widget.run_finished.disconnect(outcomes.append)
    if outcomes[0] != "done":
        raise SystemExit(f"the widget's run ended {outcomes[0]}: {widget.status.value}")
    return float(widget.last_seconds)


def main() -> None:
    """Time both paths, interleaved; print a table and the ratio; write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volume", default=str(sample_volume_path()), help="a .nii or .nii.gz volume")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for both (default: torch's own, as a user gets)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("NAPARI_CDAL_MODEL_DIR", tempfile.mkdtemp(prefix="napari-cdal-models-"))

    import napari
    from qtpy.QtWidgets import QApplication

    volume = Path(args.volume)
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    viewer.open(str(volume), plugin="napari-cdal")
    _, widget = viewer.window.add_plugin_dock_widget("napari-cdal", "Segment")
    widget.model.value = str(resolve_model_path(DEFAULT_VOLUME_MODEL))  # what the CLI takes for a volume
    app.processEvents()
    first_click = widget_click(app, widget)
    out = Path(tempfile.mkdtemp(prefix="napari-cdal-bench-"))
    cli_runs, widget_runs = [], []
    for _ in range(args.repeats):
        cli_runs.append(cli_seconds(volume, out, args.threads))
        widget_runs.append(widget_click(app, widget))
    shape = list(widget.image.value.data.shape)
    viewer.close()
    cli, clicked = statistics.median(cli_runs), statistics.median(widget_runs)
    rows = [
        {"path": "napari-cdal segment (wall, with loading and writing)", "median s": round(cli, 3),
         "runs": " ".join(f"{s:.2f}" for s in cli_runs)},
        {"path": "Segment widget, click to labels (model loaded)", "median s": round(clicked, 3),
         "runs": " ".join(f"{s:.2f}" for s in widget_runs)},
        {"path": "Segment widget, first click (loads the model)", "median s": round(first_click, 3), "runs": ""},
    ]
    print(table(rows, ["path", "median s", "runs"]))
    ratio = round(clicked / cli, 3)
    print(f"widget / command line: {ratio}x (the aim: at most 1.3x); load average {os.getloadavg()[0]:.2f}")
    write_json(args.json, {"volume": display_path(volume), "shape": shape,
                           "rows": rows, "ratio": ratio, "load_average": os.getloadavg(), "machine": machine()})


if __name__ == "__main__":
    main()
