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


def test_napari_finds_the_top_level_manifest_and_every_python_name_in_it_imports() -> None:
    # napari finds the manifest through the entry point (napari_cdal:napari.yaml, in the package a link to the
    # top-level file, which a checkout without symlinks turns into a one-line text file): what it finds there must
    # be the top-level manifest, and every command of that manifest must name code that imports (npe2's --imports,
    # in a fresh interpreter). The built wheel's member is compared in test_wheel_carries_manifest_sample_and_weights.
    import importlib.metadata
    import importlib.resources

    from npe2 import PluginManifest

    (entry,) = [e for e in importlib.metadata.entry_points(group="napari.manifest") if e.name == "napari-cdal"]
    module, _, name = entry.value.partition(":")
    found = importlib.resources.files(module) / name
    assert PluginManifest.from_file(Path(str(found))) == PluginManifest.from_file(ROOT / "napari.yaml")
    result = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "--imports", str(ROOT / "napari.yaml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


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
