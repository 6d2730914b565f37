"""The MPII loader on the real photos (with annotations written for the test) and generated images."""

from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch

from shg_fast.data import mpii
from shg_fast.data.mpii import MPIIDataset, read_image_rgb
from shg_fast.ops import decode_heatmaps
from shg_fast.pose.decode import heatmaps_to_image
from shg_fast.pose.joints import MPII_FLIP_PERM
from shg_fast.pose.transforms import crop, to_input

PHOTOS = Path(__file__).resolve().parents[1] / "data" / "mpii" / "images"


def write_annotations(path, names, sizes, rng, imgname=True):
    """An MPII-style .h5: one person per image, centred, joints spread around the centre."""
    n = len(names)
    centers = np.array([(w / 2, h / 2) for h, w in sizes])
    scales = np.array([min(h, w) / 400 for h, w in sizes])
    part = centers[:, None] + rng.uniform(-80, 80, size=(n, 16, 2)) * scales[:, None, None]
    part[0, 4] = (-1, -1)  # not annotated
    with h5py.File(path, "w") as f:
        f["part"], f["center"], f["scale"] = part, centers, scales
        f["normalize"] = scales * 40
        if imgname:
            f["imgname"] = np.array([n.encode() for n in names])
    return part


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    names = sorted(p.name for p in PHOTOS.glob("*.jpg"))[:3]
    sizes = [cv2.imread(str(PHOTOS / n)).shape[:2] for n in names]
    path = tmp_path_factory.mktemp("mpii") / "annot.h5"
    part = write_annotations(path, names, sizes, np.random.default_rng(0))
    return path, names, part


def test_real_photos_crop_and_targets(photos):
    path, names, part = photos
    ds = MPIIDataset(path, PHOTOS, res=64)
    assert len(ds) == 3
    item = ds[0]
    center, scale = ds.crop_params(0)
    expected = to_input(crop(read_image_rgb(PHOTOS / names[0]), center, scale, 0.0, 64))
    torch.testing.assert_close(item["input"], torch.from_numpy(expected))
    assert item["target"].shape == (16, 16, 16)
    assert not item["target"][4].any()  # not annotated
    assert item["target"][0].max() == 1.0
    coords, _ = decode_heatmaps(item["target"][None])
    hm_scale = 200 * scale / 16
    back = heatmaps_to_image(coords, center, scale, 16)[0]
    assert np.abs(back[0] - part[0, 0]).max() <= hm_scale + 1


def test_original_centre_and_scale_adjustment(photos):
    path, _, _ = photos
    ds = MPIIDataset(path, PHOTOS, res=64)
    c, s = ds.crop_params(1)
    assert c[1] == pytest.approx(ds.center[1, 1] + 15 * ds.scale[1]) and s == pytest.approx(1.25 * ds.scale[1])


def test_augmentation_varies_and_stays_valid(photos):
    path, _, _ = photos
    ds = MPIIDataset(path, PHOTOS, res=64, augment=True, seed=4)
    items = []
    for epoch in range(2):
        ds.set_epoch(epoch)
        items.append(ds[2])
    assert not torch.equal(items[0]["input"], items[1]["input"])
    for item in items:
        assert 0 <= item["input"].min() and item["input"].max() <= 1


@pytest.mark.parametrize("flip", [False, True])
def test_flip_mirrors_the_crop_and_swaps_left_and_right(photos, monkeypatch, flip):
    """As the original: crop first, then mirror the input and the targets (left and right swapped)."""
    path, _, _ = photos
    plain = MPIIDataset(path, PHOTOS, res=64)[1]
    identity = {"rot": 0.0, "scale": 1.0, "flip": flip, "color": np.ones(3, np.float32)}
    monkeypatch.setattr(mpii, "augment_params", lambda rng: identity)
    item = MPIIDataset(path, PHOTOS, res=64, augment=True)[1]
    if flip:
        torch.testing.assert_close(item["input"], plain["input"].flip(-1), rtol=0, atol=0)
        torch.testing.assert_close(item["target"], plain["target"][list(MPII_FLIP_PERM)].flip(-1), rtol=0, atol=0)
        assert item["target"][0].max() == 1.0 and not torch.equal(item["target"], plain["target"])
    else:
        torch.testing.assert_close(item["input"], plain["input"], rtol=0, atol=0)
        torch.testing.assert_close(item["target"], plain["target"], rtol=0, atol=0)


def test_generated_images_with_image_list(tmp_path):
    rng = np.random.default_rng(2)
    names = ["a.png", "b.png"]
    for name in names:
        cv2.imwrite(str(tmp_path / name), rng.integers(0, 256, size=(120, 90, 3), dtype=np.uint8))
    write_annotations(tmp_path / "ann.h5", names, [(120, 90)] * 2, rng, imgname=False)
    (tmp_path / "list.txt").write_text("\n".join(names))
    ds = MPIIDataset(tmp_path / "ann.h5", tmp_path, tmp_path / "list.txt", res=64)
    assert ds[1]["input"].shape == (3, 64, 64)


def test_errors(tmp_path, photos):
    path, _, _ = photos
    with pytest.raises(FileNotFoundError, match="image folder"):
        MPIIDataset(path, tmp_path / "nowhere")
    (tmp_path / "bad.h5").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="HDF5"):
        MPIIDataset(tmp_path / "bad.h5", PHOTOS)
    with h5py.File(tmp_path / "nopart.h5", "w") as f:
        f["center"] = np.zeros((1, 2))
    with pytest.raises(ValueError, match="missing"):
        MPIIDataset(tmp_path / "nopart.h5", PHOTOS)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 nope")
    with pytest.raises(ValueError, match="cannot read image"):
        read_image_rgb(tmp_path / "broken.jpg")
