"""Packaging: the napari manifest is found in the editable install and inside a built wheel."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_manifest_validates_in_the_installed_package() -> None:
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-cdal")
    assert manifest.name == "napari-cdal"
    assert [s.key for s in manifest.contributions.sample_data] == ["monuseg", "hippocampus"]
    result = subprocess.run([sys.executable, "-m", "npe2", "validate", "napari-cdal"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_top_level_manifest_is_the_packaged_one() -> None:
    packaged = ROOT / "src" / "napari_cdal" / "napari.yaml"
    assert packaged.read_text() == (ROOT / "napari.yaml").read_text()


@pytest.mark.slow
def test_wheel_carries_manifest_sample_and_weights(tmp_path) -> None:
    # build from a copy without build/ and egg-info: setuptools would pack stale files left there
    source = tmp_path / "source"
    shutil.copytree(
        ROOT,
        source,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "out", "runs", "__pycache__", "*.egg-info", "benchmarks", "docs"
        ),
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(source),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("napari_cdal-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        manifest = zf.read("napari_cdal/napari.yaml").decode()
        entry_points = zf.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert manifest == (ROOT / "napari.yaml").read_text()
    assert "napari-cdal = napari_cdal:napari.yaml" in entry_points
    assert "napari_cdal/sample_data/TCGA-B0-5698-01Z-00-DX1.tif" in names
    modules = {n for n in names if n.startswith("napari_cdal/") and n.endswith((".py", ".tif"))}
    in_source = {
        str(p.relative_to(ROOT / "src"))
        for p in (ROOT / "src" / "napari_cdal").rglob("*")
        if p.suffix in (".py", ".tif") and "__pycache__" not in p.parts
    }
    assert modules == in_source, "the wheel holds exactly the package's modules and sample"
    assert "napari_cdal/sample_data/LICENSE.md" in names
    assert "napari_cdal/engine/method/sampler.py" in names
    weights = ROOT / "src" / "napari_cdal" / "weights"
    for bundled in weights.glob("*.safetensors"):
        assert f"napari_cdal/weights/{bundled.name}" in names


def test_engine_never_imports_napari_or_qt() -> None:
    code = (
        "import importlib, pkgutil, sys, napari_cdal.engine, napari_cdal.cli; "
        "[importlib.import_module(m.name) for m in "
        "pkgutil.walk_packages(napari_cdal.engine.__path__, 'napari_cdal.engine.')]; "
        "gui = ('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'magicgui'); "
        "bad = [m for m in sys.modules if m.split('.')[0] in gui]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
