"""Blocks on a real Dask cluster: the labels of a local run, on a loaded machine, with a worker killed inside a block,
and a Cancel that leaves nothing queued."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from conftest import TILED, blob_mosaic

from napari_cdal.engine.events import TICK, run_to_end
from napari_cdal.engine.slide import stitch
from napari_cdal.engine.slide.source import open_slide
from napari_cdal.engine.slide.store import store_levels

distributed = pytest.importorskip("distributed")

BLOCK, HALO_UM, MPP = 96, 10.0, 0.5
KILLED_BLOCK = 4
"""The centre block of the 3 x 3: blocks before it are done, blocks after it are queued or running."""


def segment_block_dying_once(model: str, slide: str, index: int, *args, **kwargs):
    """stitch.segment_block, except that the worker process running KILLED_BLOCK is killed inside it, once, after
    the block's first event (its pixels read, its segmentation started), as the system kills a process: no cleanup,
    no reply. A file beside the slide remembers that it happened (the task runs again on a worker)."""
    from napari_cdal.engine.method.model import load_model

    marker = Path(slide).with_name("a_worker_was_killed")
    if index != KILLED_BLOCK or marker.exists():
        return stitch.segment_block(model, slide, index, *args, **kwargs)
    marker.touch()
    for _ in stitch.block_events(load_model(model), slide, index, *args):
        os.kill(os.getpid(), signal.SIGKILL)


def segment_block_killing_every_worker(model: str, slide: str, index: int, *args, **kwargs):
    """stitch.segment_block, except that every worker process that runs KILLED_BLOCK is killed (a block too large
    for any worker's memory)."""
    if index == KILLED_BLOCK:
        os.kill(os.getpid(), signal.SIGKILL)
    return stitch.segment_block(model, slide, index, *args, **kwargs)


def segment_block_held(model: str, slide: str, index: int, *args, **kwargs):
    """stitch.segment_block, except that every block but the first waits until a file "go" lies beside the slide
    (a minute at most), so a run is surely waiting on the cluster when the test cancels it."""
    gate = Path(slide).with_name("go")
    for _ in range(1200):
        if index == 0 or gate.exists():
            break
        time.sleep(0.05)
    return stitch.segment_block(model, slide, index, *args, **kwargs)


@pytest.fixture()
def busy_cpu():
    """Another process spinning on a core while the test runs: the machine is loaded, as a shared one is."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    yield
    spinner.kill()
    spinner.wait()


@pytest.fixture(scope="module")
def two_workers():
    """A real cluster of two worker processes, one thread each (one torch thread, as --workers gives them), shared by
    the module's tests."""
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, env={"OMP_NUM_THREADS": "1"}
    )
    client = distributed.Client(cluster)
    yield client, cluster
    client.close()
    cluster.close()


@pytest.fixture()
def mosaic(tmp_path) -> Path:
    path = tmp_path / "slide.tif"
    blob_mosaic(path, **TILED)
    return path


def _events(model, path, store, **kw):
    """segment_slide's events on the mosaic in 3 x 3 blocks."""
    with open_slide(path) as source:
        yield from stitch.segment_slide(model, source, store, MPP, block=BLOCK, halo_um=HALO_UM, **kw)


def _labels(store) -> np.ndarray:
    return np.asarray(store_levels(store)[0][:])


def test_a_worker_killed_inside_a_block_on_a_loaded_machine_leaves_the_labels_of_a_local_run(
    tiny_model_file, mosaic, tmp_path, monkeypatch, busy_cpu, two_workers
):
    from napari_cdal.engine.method.model import load_model

    client, _ = two_workers
    torch.set_num_threads(1)  # as the workers: the same arithmetic, so the same labels
    model = load_model(tiny_model_file)
    local = run_to_end(_events(model, mosaic, tmp_path / "local.zarr", detections=True))
    monkeypatch.setattr(stitch, "segment_block", segment_block_dying_once)
    monkeypatch.setattr(stitch, "TICK_WAIT_S", 0.001)  # many short waits: none may cut a gather short
    pids = set(client.run(os.getpid).values())
    stages = []
    result = run_to_end(
        _events(model, mosaic, tmp_path / "cluster.zarr", detections=True, client=client),
        lambda event: stages.append(event.stage),
    )
    assert (tmp_path / "a_worker_was_killed").exists()
    assert not pids <= set(client.run(os.getpid).values()), "a worker process died (its nanny started another)"
    assert TICK in stages, "waiting on the cluster ticks: a place for a Cancel"
    assert result.n_nuclei == local.n_nuclei > 50
    np.testing.assert_array_equal(_labels(result.store), _labels(local.store))
    for run in ("cluster", "local"):
        store = result.store if run == "cluster" else local.store
        stitch.write_slide_detections(store, tmp_path / f"{run}.geojson", tmp_path / f"{run}.csv")
    for suffix in (".geojson", ".csv"):
        written = (tmp_path / f"cluster{suffix}").read_text()
        assert written == (tmp_path / f"local{suffix}").read_text() and len(written) > 1000


def test_a_cancelled_cluster_run_leaves_nothing_queued_and_goes_on_to_the_local_labels(
    tiny_model_file, mosaic, tmp_path, monkeypatch, two_workers
):
    import zarr

    from napari_cdal.engine.method.model import load_model

    client, _ = two_workers
    torch.set_num_threads(1)
    model = load_model(tiny_model_file)
    local = run_to_end(_events(model, mosaic, tmp_path / "local.zarr"))
    with monkeypatch.context() as patch:
        patch.setattr(stitch, "segment_block", segment_block_held)
        events = _events(model, mosaic, tmp_path / "cluster.zarr", client=client)
        for event in events:
            if event.stage == TICK and zarr.open_array(tmp_path / "cluster.zarr", mode="r").attrs["done"]:
                break
        events.close()  # a Cancel while waiting on the cluster: block 0 done, the others held
    mosaic.with_name("go").touch()
    assert zarr.open_array(tmp_path / "cluster.zarr", mode="r").attrs["done"] == [0]
    states = client.run_on_scheduler(lambda dask_scheduler: [task.state for task in dask_scheduler.tasks.values()])
    assert not set(states) & {"waiting", "queued", "no-worker", "processing"}, "no block left to run or running"
    resumed = run_to_end(_events(model, mosaic, tmp_path / "cluster.zarr", client=client))
    np.testing.assert_array_equal(_labels(resumed.store), _labels(local.store))


def test_a_block_that_kills_every_worker_it_runs_on_ends_the_run_in_one_line_keeping_the_blocks_done(
    tiny_model_file, mosaic, tmp_path, monkeypatch, two_workers
):
    import zarr

    from napari_cdal.engine.method.model import load_model

    client, _ = two_workers

    def allow_failures(count: int) -> int:
        """Set how many workers may die with one task before the scheduler gives up on it; return the former count."""

        def swap(dask_scheduler) -> int:
            former = dask_scheduler.allowed_failures
            dask_scheduler.allowed_failures = count
            return former

        return client.run_on_scheduler(swap)

    monkeypatch.setattr(stitch, "segment_block", segment_block_killing_every_worker)
    former = allow_failures(0)  # the first death ends the task: one worker restarted, not four
    try:
        with pytest.raises(stitch.ClusterError, match="^block [0-9]+ was lost with every worker that ran it") as lost:
            run_to_end(_events(load_model(tiny_model_file), mosaic, tmp_path / "cluster.zarr", client=client))
    finally:
        allow_failures(former)
    # the killed worker may also have held the block before (queued on it while it ran another): that one is
    # lost too, and the run ends at the first lost block in order, keeping every block before it
    first_lost = int(str(lost.value).split()[1])
    assert first_lost <= KILLED_BLOCK
    assert zarr.open_array(tmp_path / "cluster.zarr", mode="r").attrs["done"] == list(range(first_lost))


def test_segment_workers_and_scheduler_give_the_labels_of_a_local_run(
    capsys, tiny_model_file, mosaic, tmp_path, two_workers
):
    from conftest import files_in, run

    _, cluster = two_workers
    code, _, err = run(
        capsys, "segment", mosaic, "--model", tiny_model_file, "--out", tmp_path / "local", "--slide", "--threads", "1"
    )
    assert code == 0, err
    local = tifffile.imread(tmp_path / "local" / "slide_labels.tif")
    for flag, value in (("--workers", "2"), ("--scheduler", cluster.scheduler_address)):
        out = tmp_path / flag.strip("-")
        code, stdout, err = run(
            capsys,
            "segment",
            mosaic,
            "--model",
            tiny_model_file,
            "--out",
            out,
            flag,
            value,
            "--threads",
            "1",
            "--measurements",
        )
        assert code == 0, err
        assert " blocks at 0.5 µm/px" in stdout
        assert files_in(out) == ["slide_labels.tif", "slide_labels.zarr", "slide_nuclei.csv", "slide_tissue.png"]
        np.testing.assert_array_equal(tifffile.imread(out / "slide_labels.tif"), local, err_msg=flag)
