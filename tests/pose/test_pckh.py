"""PCKh: the documented figures for the example predictions, the definition, the curve."""

from pathlib import Path

import numpy as np
import pytest

from shg_fast.pose.joints import MPII_JOINTS
from shg_fast.pose.pckh import evaluate_files, load_annotations, pck, pck_curve, save_pck_curve

DATA = Path(__file__).resolve().parents[1] / "data" / "mpii"
ANNOT, PREDS = DATA / "valid.h5", DATA / "preds" / "valid-example.h5"

#: The figures documented in tests/data/README.md for preds/valid-example.h5.
DOCUMENTED = {
    "total_weighted": 83.94, "total_unweighted": 83.36, "total_all16": 85.02,
    "per_joint": dict(zip(MPII_JOINTS, (72.96, 77.79, 83.21, 82.79, 78.25, 72.82, 87.84, 96.42,
                                        96.11, 93.82, 78.01, 84.46, 91.88, 92.60, 84.52, 77.83))),
}


def test_reproduces_documented_figures():
    result = evaluate_files(PREDS, ANNOT)
    for key in ("total_weighted", "total_unweighted", "total_all16"):
        assert round(result[key], 2) == DOCUMENTED[key], key
    assert {k: round(v, 2) for k, v in result["per_joint"].items()} == DOCUMENTED["per_joint"]
    assert result["num_samples"] == 2958


def test_definition_on_small_cases():
    gt = np.full((3, 16, 2), 100.0)
    gt[2, 4] = (-1, -1)  # not annotated
    norm = np.array([10.0, 20.0, 10.0])
    preds = gt.copy()
    preds[0, 0, 0] += 5.0  # exactly 0.5 head: correct
    preds[1, 0, 0] += 10.0 + 1e-6  # just over: wrong
    preds[:, 9, 1] += 100.0  # head wrong everywhere
    r = pck(preds, gt, norm)
    assert r["per_joint"]["rank"] == pytest.approx(200 / 3)
    assert r["per_joint"]["head"] == 0.0
    assert r["counts"]["lkne"] == 2 and r["per_joint"]["lkne"] == 100.0
    counted = 14 * 3 - 1
    assert r["total_weighted"] == pytest.approx(100 * (counted - 1 - 3) / counted)
    per14 = [v for k, v in r["per_joint"].items() if k not in ("pelv", "thrx")]
    assert r["total_unweighted"] == pytest.approx(np.mean(per14))
    assert r["total_all16"] == pytest.approx(100 * (47 - 1 - 3) / 47)


def test_curve_is_monotone_and_matches_pck_at_half(tmp_path):
    ann = load_annotations(ANNOT)
    rng = np.random.default_rng(0)
    preds = ann["part"] + rng.normal(0, 8, size=ann["part"].shape)
    curve = pck_curve(preds, ann["part"], ann["normalize"])
    assert curve["thresholds"][0] == 0 and curve["thresholds"][-1] == 0.5
    assert np.all(np.diff(curve["total_weighted"]) >= 0)
    r = pck(preds, ann["part"], ann["normalize"])
    assert curve["total_weighted"][-1] == pytest.approx(r["total_weighted"])
    np.testing.assert_allclose(curve["per_joint"][-1], list(r["per_joint"].values()))
    out = tmp_path / "curve.png"
    save_pck_curve(out, curve)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_shape_errors():
    gt = np.ones((4, 16, 2))
    with pytest.raises(ValueError, match="predictions"):
        pck(np.ones((4, 15, 2)), gt, np.ones(4))
    with pytest.raises(ValueError, match="normalize"):
        pck(gt, gt, np.ones(3))
