"""Seconds to segment an MRI volume in the Segment widget against `napari-cdal segment`, in one run.

    xvfb-run -a python benchmarks/volume_widget.py [--volume VOL.nii.gz] [--repeats 5] [--json FILE]

Each scenario runs in a process of its own, since what it measures is the order of imports:

- plugin-first: napari docks the widget before anything has loaded torch (a user's session), so the
  plugin asks OpenMP to wait passively before torch loads;
- torch-first: torch is loaded before the plugin (another plugin or a script did it), so OpenMP's
  threads spin-wait, and the plugin takes one thread for its runs (_widgets/_model_cache.py);
- torch-first-spinning: the same without that rule (torch's own thread count, spinning), as the
  widget ran before it: pass it with --scenarios to see what the rule saves.

In each, every repeat runs the command line in that process (`napari_cdal.cli.main(["segment", VOL,
...])`, its wall time: loading the model, segmenting, writing the labels) and then clicks Segment
on the same volume (the widget's seconds from click to labels), interleaved so that a busy machine
slows both alike. The widget's first click, which loads the model and adds the layers, is reported
apart. Defaults: the bundled sample volume and the bundled volume model at its defaults, torch's
own thread count. Needs a display (Xvfb on a headless machine). Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCENARIOS = ("plugin-first", "torch-first", "torch-first-spinning")


def child(volume: Path, repeats: int, scenario: str) -> dict:
    """One scenario, in this process: import in its order, time both paths, return the seconds."""
    # napari's settings of this run (the plugin sets its reader preferences when first used), not the user's
    os.environ.setdefault("NAPARI_CONFIG", str(Path(tempfile.mkdtemp(prefix="napari-settings-")) / "settings.yaml"))
    if scenario.startswith("torch-first"):
        import torch  # noqa: F401  (loaded before the plugin, as another plugin or a script may)
    from napari_cdal._widgets import _model_cache

    _model_cache.ask_passive_openmp()  # what docking a widget does first (its device field is the first torch)
    if scenario == "torch-first-spinning":
        _model_cache.OPENMP_SPINS = False  # the rule off: runs keep torch's threads, which spin
    from napari_cdal.cli import main as cli_main

    os.environ.setdefault("NAPARI_CDAL_MODEL_DIR", tempfile.mkdtemp(prefix="napari-cdal-models-"))
    import napari
    from qtpy.QtWidgets import QApplication

    def widget_click() -> float:
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

    def cli_seconds() -> float:
        started = time.perf_counter()
        if cli_main(["segment", str(volume), "--out", str(out), "--overwrite"]) != 0:
            raise SystemExit("napari-cdal segment failed")
        return time.perf_counter() - started

    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    _, widget = viewer.window.add_plugin_dock_widget("napari-cdal", "Segment")
    viewer.open(str(volume), plugin="napari-cdal")
    app.processEvents()
    model = Path(widget.selected_model_path()).stem  # the widget takes the volume model by itself
    first = widget_click()
    out = Path(tempfile.mkdtemp(prefix="napari-cdal-bench-"))
    cli_runs, widget_runs = [], []
    for _ in range(repeats):
        cli_runs.append(cli_seconds())
        widget_runs.append(widget_click())
    shape = list(widget.image.value.data.shape)
    viewer.close()
    import torch

    return {
        "scenario": scenario,
        "model": model,
        "shape": shape,
        "cli": cli_runs,
        "widget": widget_runs,
        "first_click": first,
        "torch_threads": torch.get_num_threads(),
        "one_thread_rule": _model_cache.OPENMP_SPINS,
        "load_average": os.getloadavg()[0],
    }


def main() -> None:
    """Run each scenario in its own process; print a table and the ratios; write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volume", default=None, help="a .nii or .nii.gz volume (default: the bundled sample)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS[:2]))
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", choices=SCENARIOS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.volume is None:
        from napari_cdal.sample_data import sample_volume_path

        args.volume = str(sample_volume_path())
    if args.child:
        print(json.dumps(child(Path(args.volume), args.repeats, args.child)))
        return
    from _common import display_path, machine, table, write_json

    results = []
    for scenario in args.scenarios:
        done = subprocess.run(
            [sys.executable, __file__, "--child", scenario, "--volume", args.volume, "--repeats", str(args.repeats)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise SystemExit(f"the {scenario} run failed:\n{done.stderr[-3000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    rows = []
    for result in results:
        cli, clicked = statistics.median(result["cli"]), statistics.median(result["widget"])
        result["ratio"] = round(clicked / cli, 3)
        rows.append(
            {
                "scenario": result["scenario"],
                "CLI s (median)": round(cli, 3),
                "widget s (median)": round(clicked, 3),
                "widget / CLI": result["ratio"],
                "first click s": round(result["first_click"], 3),
                "CLI runs": " ".join(f"{s:.2f}" for s in result["cli"]),
                "widget runs": " ".join(f"{s:.2f}" for s in result["widget"]),
                "load": round(result["load_average"], 2),
            }
        )
    print(f"{display_path(args.volume)}, shape {results[0]['shape']}, model {results[0]['model']} at its defaults")
    print(table(rows, list(rows[0])))
    print(
        "CLI: napari-cdal segment's wall time (loading, segmenting, writing); widget: click to labels, model "
        "loaded; the aim: widget / CLI at most 1.3"
    )
    write_json(args.json, {"volume": display_path(args.volume), "results": results, "machine": machine()})


if __name__ == "__main__":
    main()
