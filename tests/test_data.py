"""Tests for napari_cdal.engine.data (tiles, augment, patches) on small synthetic folders (and MoNuSeg, if there)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from skimage.color import hed2rgb, hed_from_rgb, hsv2rgb, rgb2hed, rgb2hsv, rgb_from_hed

from napari_cdal.engine.data import patches
from napari_cdal.engine.data.augment import colour_jitter, hed_jitter
from napari_cdal.engine.data.patches import PatchSampler
from napari_cdal.engine.data.tiles import Tile, list_tiles, load_folder, load_tile, resample_tile
from napari_cdal.engine.io.annotations import xml_to_instances

# Two squares whose vertices sit on pixel edges (half-integers), so the filled pixels are obvious:
# region 1 covers rows 2..5 x cols 2..5 (16 px), region 2 rows 21..23 x cols 11..15 (15 px).
TWO_SQUARES_XML = """<Annotations MicronsPerPixel="0.252700">
  <Annotation Id="1">
    <Regions>
      <Region Id="1">
        <Vertices>
          <Vertex X="1.5" Y="1.5"/><Vertex X="5.5" Y="1.5"/>
          <Vertex X="5.5" Y="5.5"/><Vertex X="1.5" Y="5.5"/>
        </Vertices>
      </Region>
      <Region Id="2">
        <Vertices>
          <Vertex X="10.5" Y="20.5"/><Vertex X="15.5" Y="20.5"/>
          <Vertex X="15.5" Y="23.5"/><Vertex X="10.5" Y="23.5"/>
        </Vertices>
      </Region>
    </Regions>
  </Annotation>
</Annotations>
"""


def _square_xml(squares: list[tuple[float, float, float, float]]) -> str:
    """Aperio XML with one Region per (x0, y0, x1, y1) rectangle."""
    regions = []
    for i, (x0, y0, x1, y1) in enumerate(squares, start=1):
        verts = "".join(f'<Vertex X="{x}" Y="{y}"/>' for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1)))
        regions.append(f'<Region Id="{i}"><Vertices>{verts}</Vertices></Region>')
    return f"<Annotations><Annotation><Regions>{''.join(regions)}</Regions></Annotation></Annotations>"


def _blobs(shape: tuple[int, int] = (64, 64)) -> np.ndarray:
    inst = np.zeros(shape, dtype=np.uint16)
    inst[5:15, 5:15] = 1
    inst[30:40, 20:28] = 2
    inst[50:60, 40:60] = 3
    return inst


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Three tiles: 'a' (TIFF + instance PNG), 'b' (grey PNG + XML, mask 0/255), 'c' (mask only)."""
    rng = np.random.default_rng(0)
    for sub in ("images", "masks", "masks_instance", "annotations"):
        (tmp_path / sub).mkdir()
    inst = _blobs()
    tifffile.imwrite(tmp_path / "images" / "a.tif", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    Image.fromarray((inst > 0).astype(np.uint8)).save(tmp_path / "masks" / "a.png")
    Image.fromarray(inst).save(tmp_path / "masks_instance" / "a.png")

    Image.fromarray(rng.integers(0, 256, (32, 24), dtype=np.uint8)).save(tmp_path / "images" / "b.png")
    (tmp_path / "annotations" / "b.xml").write_text(TWO_SQUARES_XML)
    mask_b = np.zeros((32, 24), dtype=np.uint8)
    mask_b[2:6, 2:6] = 255
    mask_b[21:24, 11:16] = 255
    Image.fromarray(mask_b).save(tmp_path / "masks" / "b.png")

    tifffile.imwrite(tmp_path / "images" / "c.tif", rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    mask_c = np.zeros((40, 40), dtype=np.uint8)
    mask_c[2:8, 2:8] = 1
    mask_c[20:30, 25:35] = 1
    mask_c[8, 8] = 1  # touches the first blob only diagonally: 4-connectivity keeps it apart
    Image.fromarray(mask_c).save(tmp_path / "masks" / "c.png")

    (tmp_path / "images" / "notes.txt").write_text("not an image")
    (tmp_path / "manifest.csv").write_text("id,organ,split\na,kidney,train\nb,,train\n")
    return tmp_path


# ------------------------------------------------------------------------------------------------
# XML
# ------------------------------------------------------------------------------------------------


def test_xml_two_squares_have_hand_computed_areas(tmp_path: Path) -> None:
    path = tmp_path / "two.xml"
    path.write_text(TWO_SQUARES_XML)
    inst = xml_to_instances(path, (32, 24))
    assert inst.dtype == np.uint32 and inst.shape == (32, 24)
    assert sorted(np.unique(inst).tolist()) == [0, 1, 2]
    expected = np.zeros((32, 24), dtype=np.uint32)
    expected[2:6, 2:6] = 1
    expected[21:24, 11:16] = 2
    np.testing.assert_array_equal(inst, expected)
    assert np.count_nonzero(inst == 1) == 16 and np.count_nonzero(inst == 2) == 15


def test_xml_later_region_wins_and_ids_are_renumbered(tmp_path: Path) -> None:
    path = tmp_path / "overlap.xml"
    # Region 1: rows/cols 2..5; region 2 (rows/cols 10..11) is then covered by region 3 (9..12);
    # region 4 (rows/cols 4..7) overlaps region 1.
    path.write_text(
        _square_xml(
            [
                (1.5, 1.5, 5.5, 5.5),
                (9.5, 9.5, 11.5, 11.5),
                (8.5, 8.5, 12.5, 12.5),
                (3.5, 3.5, 7.5, 7.5),
            ]
        )
    )
    inst = xml_to_instances(path, (16, 16))
    assert sorted(np.unique(inst).tolist()) == [0, 1, 2, 3]
    assert np.count_nonzero(inst == 1) == 16 - 4
    assert np.count_nonzero(inst == 2) == 16  # the former region 3
    assert np.count_nonzero(inst == 3) == 16  # the former region 4, drawn last
    assert inst[4, 4] == 3 and inst[2, 2] == 1


def test_xml_polygon_is_clipped_to_shape(tmp_path: Path) -> None:
    path = tmp_path / "edge.xml"
    path.write_text(_square_xml([(-3.5, -3.5, 1.5, 1.5), (50.5, 50.5, 60.5, 60.5)]))
    inst = xml_to_instances(path, (8, 8))
    assert np.count_nonzero(inst == 1) == 4 and inst.max() == 1


def test_malformed_xml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.xml"
    path.write_text("<Annotations><Region><Vertices><Vertex X='1' Y='2'/>")
    with pytest.raises(ValueError, match="broken.xml"):
        xml_to_instances(path, (8, 8))


def test_xml_vertex_without_coordinates_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "novertex.xml"
    path.write_text("<Annotations><Region Id='7'><Vertices><Vertex X='1'/></Vertices></Region></Annotations>")
    with pytest.raises(ValueError, match="novertex.xml"):
        xml_to_instances(path, (8, 8))


def test_xml_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothere.xml"):
        xml_to_instances(tmp_path / "nothere.xml", (8, 8))


# ------------------------------------------------------------------------------------------------
# Folder loading
# ------------------------------------------------------------------------------------------------


def test_list_tiles_sorted_images_only(folder: Path) -> None:
    assert list_tiles(folder) == ["a", "b", "c"]


def test_missing_image_folder_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="images"):
        list_tiles(tmp_path / "empty")


def test_load_tile_from_instance_png(folder: Path) -> None:
    tile = load_tile(folder, "a")
    assert tile.name == "a" and tile.organ == "kidney"
    assert tile.image.shape == (64, 64, 3) and tile.image.dtype == np.uint8
    assert tile.has_instance_truth
    assert tile.instances.dtype == np.uint32
    np.testing.assert_array_equal(tile.instances, _blobs())
    assert tile.foreground.dtype == bool
    np.testing.assert_array_equal(tile.foreground, _blobs() > 0)
    np.testing.assert_array_equal(tile.image, tifffile.imread(folder / "images" / "a.tif"))


def test_load_tile_from_xml_with_grey_png_and_255_mask(folder: Path) -> None:
    tile = load_tile(folder, "b")
    assert tile.organ is None  # empty organ cell
    assert tile.has_instance_truth
    assert tile.image.shape == (32, 24, 3)
    grey = np.asarray(Image.open(folder / "images" / "b.png"))
    for c in range(3):
        np.testing.assert_array_equal(tile.image[..., c], grey)
    assert np.count_nonzero(tile.instances == 1) == 16 and np.count_nonzero(tile.instances == 2) == 15
    np.testing.assert_array_equal(tile.foreground, tile.instances > 0)


def test_load_tile_connected_components_fallback(folder: Path) -> None:
    tile = load_tile(folder, "c")
    assert not tile.has_instance_truth
    assert tile.organ is None  # not in the manifest
    assert tile.instances.dtype == np.uint32 and tile.instances.max() == 3
    np.testing.assert_array_equal(tile.foreground, tile.instances > 0)
    assert tile.instances[8, 8] not in (0, tile.instances[3, 3])


def test_load_tile_rgba_drops_alpha(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rgba = np.random.default_rng(1).integers(0, 256, (10, 12, 4), dtype=np.uint8)
    rgba[..., 3] = 255  # opaque; a varying alpha is refused, as in segment (one normalisation path)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "images" / "x.png")
    Image.fromarray(np.zeros((10, 12), dtype=np.uint8)).save(tmp_path / "masks" / "x.png")
    tile = load_tile(tmp_path, "x")
    np.testing.assert_array_equal(tile.image, rgba[..., :3])
    assert tile.instances.max() == 0


def test_mismatched_mask_shape_names_the_file(folder: Path) -> None:
    Image.fromarray(np.zeros((30, 24), dtype=np.uint8)).save(folder / "masks" / "b.png")
    with pytest.raises(ValueError, match=r"masks[/\\]b\.png"):
        load_tile(folder, "b")


def test_mismatched_instance_shape_names_the_file(folder: Path) -> None:
    Image.fromarray(np.zeros((64, 60), dtype=np.uint16)).save(folder / "masks_instance" / "a.png")
    with pytest.raises(ValueError, match=r"masks_instance[/\\]a\.png"):
        load_tile(folder, "a")


def test_non_binary_mask_is_rejected(folder: Path) -> None:
    mask = np.zeros((40, 40), dtype=np.uint8)
    mask[0, 0] = 7
    Image.fromarray(mask).save(folder / "masks" / "c.png")
    with pytest.raises(ValueError, match=r"c\.png.*\{0,1\}"):
        load_tile(folder, "c")


def test_malformed_xml_in_folder_names_the_file(folder: Path) -> None:
    (folder / "annotations" / "b.xml").write_text("<Annotations><oops")
    with pytest.raises(ValueError, match="b.xml"):
        load_tile(folder, "b")


def test_missing_image_for_name(folder: Path) -> None:
    with pytest.raises(FileNotFoundError, match="zzz"):
        load_tile(folder, "zzz")


def test_load_folder_all_and_subset(folder: Path) -> None:
    assert [t.name for t in load_folder(folder)] == ["a", "b", "c"]
    assert [t.name for t in load_folder(folder, ["c", "a"])] == ["c", "a"]


# ------------------------------------------------------------------------------------------------
# Resampling
# ------------------------------------------------------------------------------------------------


def _tile(shape: tuple[int, int] = (64, 64), truth: bool = True, seed: int = 0) -> Tile:
    rng = np.random.default_rng(seed)
    inst = _blobs(shape).astype(np.uint32) if shape == (64, 64) else np.zeros(shape, np.uint32)
    return Tile(
        name="t",
        image=rng.integers(0, 256, shape + (3,), dtype=np.uint8),
        foreground=inst > 0,
        instances=inst,
        has_instance_truth=truth,
        organ="kidney",
    )


def test_resample_halves_with_nearest_ids_and_antialiasing() -> None:
    tile = _tile()
    checker = ((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)
    tile.image = np.repeat(checker[..., None], 3, axis=-1)
    out = resample_tile(tile, 0.5)
    assert out.image.shape == (32, 32, 3) and out.image.dtype == np.uint8
    assert out.instances.shape == (32, 32) and out.instances.dtype == np.uint32
    assert set(np.unique(out.instances).tolist()) == {0, 1, 2, 3}
    np.testing.assert_array_equal(out.foreground, out.instances > 0)
    # An anti-aliased 1-px checkerboard averages to mid grey; plain subsampling would keep 0 or 255.
    assert np.abs(out.image[4:-4, 4:-4].astype(float) - 127.5).max() < 30
    assert out.name == "t" and out.organ == "kidney" and out.has_instance_truth


def test_resample_upsampling_repeats_ids_exactly_and_rounds_size() -> None:
    tile = _tile()
    out = resample_tile(tile, 2.0)
    np.testing.assert_array_equal(out.instances, np.kron(tile.instances, np.ones((2, 2), np.uint32)))
    odd = _tile((21, 35))
    assert resample_tile(odd, 0.3).image.shape == (round(21 * 0.3), round(35 * 0.3), 3)


def test_resample_without_instance_truth_uses_binary_mask() -> None:
    tile = _tile(truth=False)
    tile.foreground = np.zeros((64, 64), dtype=bool)
    tile.foreground[10:50, 10:50] = True
    out = resample_tile(tile, 0.5)
    assert out.foreground[5:25, 5:25].all() and out.foreground.sum() == 400
    assert not out.has_instance_truth


@pytest.mark.parametrize("factor", [0, -0.5, float("nan"), 0.001])
def test_resample_bad_factor(factor: float) -> None:
    with pytest.raises(ValueError, match="factor"):
        resample_tile(_tile(), factor)


# ------------------------------------------------------------------------------------------------
# Colour augmentation
# ------------------------------------------------------------------------------------------------


def _extreme_image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.uniform(0, 255, (32, 32, 3)).astype(np.float32)
    img[:4] = 0
    img[4:8] = 255
    img[8:12] = [255, 0, 0]
    img[12:16] = [0, 0, 255]
    return img


def test_hed_jitter_matches_skimage_formula() -> None:
    img = _extreme_image()
    out = hed_jitter(img, np.random.default_rng(5), strength=0.05)
    ref_rng = np.random.default_rng(5)
    alpha = ref_rng.uniform(0.95, 1.05, 3)
    beta = ref_rng.uniform(-0.05, 0.05, 3)
    assert out.dtype == np.float32 and out.shape == img.shape
    # skimage's stain space without rgb2hed's clamp of negative stains ...
    log_adjust = np.log(1e-6)
    stains = (np.log(np.maximum(img / 255.0, 1e-6)) / log_adjust) @ hed_from_rgb
    expected = np.clip(np.exp((stains * alpha + beta) * log_adjust @ rgb_from_hed), 0, 1) * 255
    np.testing.assert_allclose(out, expected, atol=0.05)
    # ... which equals rgb2hed/hed2rgb wherever no stain is negative.
    ok = (stains >= 0).all(axis=-1)
    assert ok.sum() > 100
    np.testing.assert_allclose(out[ok], (hed2rgb(rgb2hed(img / 255.0) * alpha + beta) * 255)[ok], atol=0.05)
    assert np.abs(out - img).max() > 1


def test_hed_jitter_zero_strength_is_identity() -> None:
    img = _extreme_image()
    np.testing.assert_allclose(hed_jitter(img, np.random.default_rng(0), strength=0.0), img, atol=0.05)


def test_colour_jitter_hue_matches_hsv() -> None:
    img = _extreme_image()
    out = colour_jitter(img, np.random.default_rng(3), 0.0, 0.0, 0.0, hue=0.4)
    ref_rng = np.random.default_rng(3)
    ref_rng.uniform(1, 1, 3)  # brightness, contrast, saturation factors (all 1 here)
    dh = ref_rng.uniform(-0.4, 0.4)
    hsv = rgb2hsv(img / 255.0)
    hsv[..., 0] = (hsv[..., 0] + dh) % 1.0
    np.testing.assert_allclose(out, hsv2rgb(hsv) * 255, atol=0.02)
    assert np.abs(out - img).max() > 10


def test_colour_jitter_all_zero_is_identity() -> None:
    img = _extreme_image()
    np.testing.assert_allclose(colour_jitter(img, np.random.default_rng(0), 0, 0, 0, 0), img, atol=1e-3)


def test_colour_jitters_stay_in_range_and_vary() -> None:
    rng = np.random.default_rng(11)
    img = _extreme_image()
    outs = []
    for _ in range(30):
        a = hed_jitter(img, rng, strength=0.2)
        b = colour_jitter(img, rng, 0.9, 0.9, 0.9, 0.5)
        for out in (a, b):
            assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 255
        outs.append(b)
    assert np.std([o.mean() for o in outs]) > 1


def test_colour_jitter_rejects_bad_arguments() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="brightness"):
        colour_jitter(_extreme_image(), rng, brightness=-0.1)
    with pytest.raises(ValueError, match="HxWx3"):
        hed_jitter(np.zeros((4, 4)), rng)


# ------------------------------------------------------------------------------------------------
# PatchSampler
# ------------------------------------------------------------------------------------------------


def fg_target(inst: np.ndarray) -> np.ndarray:
    return np.where(inst[None] > 0, 1.0, -1.0).astype(np.float32)


def parity_target(inst: np.ndarray) -> np.ndarray:
    """Channel 0: foreground; channel 1: odd instance id. Both in {-1, +1}."""
    return np.stack([np.where(inst > 0, 1.0, -1.0), np.where(inst % 2 == 1, 1.0, -1.0)]).astype(np.float32)


def _blocks_tile(size: int = 96, block: int = 12, seed: int = 0) -> Tile:
    """Tile of square nuclei on a grid, ids 1..N with some gaps; image encodes id parity."""
    rng = np.random.default_rng(seed)
    n = size // block
    ids = np.arange(1, n * n + 1, dtype=np.uint32).reshape(n, n)
    ids[rng.random((n, n)) < 0.3] = 0
    inst = np.kron(ids, np.ones((block, block), np.uint32))
    img = np.zeros((size, size, 3), dtype=np.uint8)
    img[..., 0] = np.where(inst % 2 == 1, 255, 0)
    img[..., 1] = np.where(inst > 0, 255, 0)
    return Tile("blocks", img, inst > 0, inst, True, None)


def test_sampler_shapes_dtypes_ranges() -> None:
    sampler = PatchSampler([_blocks_tile(), _tile()], 32, parity_target, np.random.default_rng(0))
    images, targets, weights = sampler.sample(5)
    assert images.shape == (5, 3, 32, 32) and images.dtype == np.float32
    assert targets.shape == (5, 2, 32, 32) and targets.dtype == np.float32
    assert weights.shape == (5, 1, 32, 32) and weights.dtype == np.float32
    assert images.min() >= 0 and images.max() <= 255 and images.max() > 1
    assert set(np.unique(targets).tolist()) <= {-1.0, 1.0}
    assert np.all(weights == 1)  # tiles larger than the rotated footprint: all pixels count


def test_sampler_seeded_runs_repeat_exactly() -> None:
    tiles = [_blocks_tile(), _tile()]
    a = PatchSampler(tiles, 24, parity_target, np.random.default_rng(42)).sample(3)
    b = PatchSampler(tiles, 24, parity_target, np.random.default_rng(42)).sample(3)
    c = PatchSampler(tiles, 24, parity_target, np.random.default_rng(43)).sample(3)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


def test_sampler_without_augment_returns_exact_crops() -> None:
    tile = _tile()
    sampler = PatchSampler([tile], 16, fg_target, np.random.default_rng(1), augment=False)
    images, targets, _ = sampler.sample(4)
    chw = np.moveaxis(tile.image, -1, 0).astype(np.float32)
    for k in range(4):
        hits = [
            (y, x)
            for y in range(64 - 15)
            for x in range(64 - 15)
            if np.array_equal(chw[:, y : y + 16, x : x + 16], images[k])
        ]
        assert len(hits) == 1
        y, x = hits[0]
        np.testing.assert_array_equal(targets[k], fg_target(tile.instances[y : y + 16, x : x + 16]))


def test_sampler_targets_follow_warped_instances(monkeypatch: pytest.MonkeyPatch) -> None:
    # Switch colour changes off so the warped image still encodes the instance parity exactly.
    monkeypatch.setattr(patches, "hed_jitter_cf", lambda x, rng, s: x)
    monkeypatch.setattr(patches, "colour_jitter_cf", lambda x, rng, *args: x)
    sampler = PatchSampler([_blocks_tile()], 40, parity_target, np.random.default_rng(7))
    images, targets, _ = sampler.sample(6)
    fractional = np.abs(images - np.round(images)).max()
    assert fractional > 0.01  # the patches were really warped (rotated/scaled)
    checked = 0
    for k in range(6):
        red, green = images[k, 0], images[k, 1]
        interior = green == 255  # all interpolation neighbours inside a nucleus
        background = green == 0
        assert np.all(targets[k, 0][interior] == 1) and np.all(targets[k, 0][background] == -1)
        odd, even = interior & (red == 255), interior & (red == 0)
        assert np.all(targets[k, 1][odd] == 1) and np.all(targets[k, 1][even] == -1)
        checked += int(interior.sum() + background.sum())
    assert checked > 0.5 * 6 * 40 * 40
    # Rotations slant the block edges: an axis-aligned crop holds at most ~6 distinct rows.
    distinct_rows = [len(np.unique(targets[k, 0], axis=0)) for k in range(6)]
    assert max(distinct_rows) > 10


def test_sampler_regions_restrict_patches_and_weights() -> None:
    box = (30, 42, 50, 60)
    inst = np.zeros((96, 96), dtype=np.uint32)
    inst[box[0] : box[1], box[2] : box[3]] = 5
    img = np.full((96, 96, 3), 128, dtype=np.uint8)
    tile = Tile("r", img, inst > 0, inst, True, None)
    other = Tile("o", np.full((96, 96, 3), 200, np.uint8), inst > 0, inst, True, None)
    sampler = PatchSampler([tile, other], 24, fg_target, np.random.default_rng(3), regions=[[box], []])
    images, targets, weights = sampler.sample(12)
    for k in range(12):
        w = weights[k, 0]
        assert set(np.unique(w).tolist()) <= {0.0, 1.0}
        # Weight 1 exactly where the nearest source pixel lies inside the box.
        np.testing.assert_array_equal(w == 1, targets[k, 0] == 1)
        assert 0.3 * 120 < w.sum() <= 24 * 24
    assert np.all(weights.mean(axis=(1, 2, 3)) < 1)

    plain = PatchSampler([tile, other], 24, fg_target, np.random.default_rng(3), augment=False, regions=[[box], []])
    images, targets, weights = plain.sample(8)
    assert np.all(images == 128)  # tile 'o' has no region and is never drawn
    assert np.all(weights.sum(axis=(1, 2, 3)) == 120)  # the 12x10 box lies wholly inside each patch


def test_sampler_small_tile_is_reflect_padded_with_zero_weight() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (20, 13, 3), dtype=np.uint8)
    inst = np.zeros((20, 13), dtype=np.uint32)
    tile = Tile("s", img, inst > 0, inst, True, None)
    sampler = PatchSampler([tile], 32, fg_target, np.random.default_rng(0), augment=False)
    images, _, weights = sampler.sample(3)
    for k in range(3):
        w = weights[k, 0]
        assert w.sum() == 20 * 13
        ys, xs = np.nonzero(w)
        y0, x0 = ys.min(), xs.min()
        padded = np.pad(np.moveaxis(img, -1, 0), ((0, 0), (32, 32), (32, 32)), mode="symmetric")
        np.testing.assert_array_equal(images[k], padded[:, 32 - y0 : 64 - y0, 32 - x0 : 64 - x0])
    aug = PatchSampler([tile], 32, fg_target, np.random.default_rng(0))
    images, _, weights = aug.sample(3)
    assert images.shape == (3, 3, 32, 32) and 0 < weights.sum() < 3 * 32 * 32


def test_sampler_draws_tiles_in_proportion_to_area() -> None:
    big = Tile(
        "big",
        np.full((64, 64, 3), 10, np.uint8),
        np.zeros((64, 64), bool),
        np.zeros((64, 64), np.uint32),
        True,
        None,
    )
    small = Tile(
        "small",
        np.full((32, 32, 3), 200, np.uint8),
        np.zeros((32, 32), bool),
        np.zeros((32, 32), np.uint32),
        True,
        None,
    )
    sampler = PatchSampler([big, small], 4, fg_target, np.random.default_rng(9), augment=False)
    images, _, _ = sampler.sample(2000)
    frac_big = float(np.mean(images[:, 0, 0, 0] == 10))
    assert abs(frac_big - 0.8) < 0.04


def test_sampler_rejects_bad_input() -> None:
    tile = _tile()
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="regions"):
        PatchSampler([tile], 16, fg_target, rng, regions=[[(0, 10, 0, 10)], []])
    with pytest.raises(ValueError, match=r"\(0, 70, 0, 10\)"):
        PatchSampler([tile], 16, fg_target, rng, regions=[[(0, 70, 0, 10)]])
    with pytest.raises(ValueError, match="rng"):
        PatchSampler([tile], 16, fg_target, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="patch_size"):
        PatchSampler([tile], 0, fg_target, rng)
    with pytest.raises(ValueError, match="tiles"):
        PatchSampler([], 16, fg_target, rng)
    bad = PatchSampler([tile], 16, lambda inst: np.zeros((16, 16), np.float32), rng)
    with pytest.raises(ValueError, match="targets"):
        bad.sample(1)


# ------------------------------------------------------------------------------------------------
# Optional: the real MoNuSeg training folder
# ------------------------------------------------------------------------------------------------


def _monuseg_root() -> Path | None:
    env = os.environ.get("NAPARI_CDAL_MONUSEG")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "monuseg" / "train")
    for path in candidates:
        if (path / "images").is_dir():
            return path
    return None


def test_real_monuseg_xml_matches_instance_masks() -> None:
    root = _monuseg_root()
    if root is None:
        pytest.skip("MoNuSeg folder not found (set NAPARI_CDAL_MONUSEG)")
    import csv

    names = list_tiles(root)
    assert len(names) >= 1
    with (root / "manifest.csv").open(newline="") as handle:
        row = next(r for r in csv.DictReader(handle) if r["instance_source"] == "xml")
    tile = load_tile(root, row["id"])
    assert tile.image.shape == (1000, 1000, 3) and tile.has_instance_truth and tile.organ
    from_xml = xml_to_instances(root / row["xml"], tile.image.shape[:2])
    np.testing.assert_array_equal(from_xml, tile.instances)
    assert int(tile.instances.max()) == int(row["n_instances"])
