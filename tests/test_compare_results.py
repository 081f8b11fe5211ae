"""bench/compare_results.py (the before/after check of the demo outputs) sees every kind of difference."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("compare_results", REPO / "bench" / "compare_results.py")
cmp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cmp)


def _tree(root: Path) -> Path:
    rng = np.random.default_rng(0)
    (root / "a").mkdir(parents=True)
    with h5py.File(root / "a" / "x.h5", "w") as f:
        f["pred"] = rng.standard_normal((4, 3)).astype(np.float32)
        f["ids"] = np.arange(4)
        f.attrs["dtype"] = "torch.float32"
    pd.DataFrame({"metric": ["PixCorr", "SSIM"], "value": [0.1234567, 0.5]}).to_csv(root / "a" / "t.csv", index=False)
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / "a" / "i.png")
    (root / "run.log").write_text("took 3 s")
    return root


def test_identical_trees(tmp_path):
    a, b = _tree(tmp_path / "A"), _tree(tmp_path / "B")
    (b / "run.log").write_text("took 4 s")  # logs are skipped
    res = cmp.compare_trees(a, b)
    assert res["same"] == 3 and not res["data"] and not res["attrs"] and not res["only_a"] + res["only_b"]
    assert cmp.main([str(a), str(b)]) == 0


def test_every_difference_is_reported(tmp_path, capsys):
    a, b = _tree(tmp_path / "A"), _tree(tmp_path / "B")
    with h5py.File(b / "a" / "x.h5", "r+") as f:
        v = f["pred"][()]
        v[1, 2] = np.nextafter(v[1, 2], np.float32(np.inf))  # one ulp
        f["pred"][...] = v
        f.attrs["dtype"] = "float32"
    df = pd.read_csv(b / "a" / "t.csv")
    df.loc[0, "value"] = 0.1234568
    df.to_csv(b / "a" / "t.csv", index=False)
    img = np.asarray(Image.open(b / "a" / "i.png")).copy()
    img[0, 0, 0] ^= 1
    Image.fromarray(img).save(b / "a" / "i.png")
    shutil.copy(b / "a" / "t.csv", b / "a" / "extra.csv")
    res = cmp.compare_trees(a, b)
    assert set(res["data"]) == {"a/x.h5", "a/t.csv", "a/i.png"}
    assert "pred" in res["data"]["a/x.h5"][0] and "max |diff|" in res["data"]["a/x.h5"][0]
    assert res["attrs"]["a/x.h5"] == ["/@dtype: 'torch.float32' vs 'float32'"]
    assert res["only_b"] == ["a/extra.csv"]
    assert cmp.main([str(a), str(b)]) == 1
    assert "DATA    a/x.h5" in capsys.readouterr().out


def test_attribute_only_difference_passes(tmp_path):
    a, b = _tree(tmp_path / "A"), _tree(tmp_path / "B")
    with h5py.File(b / "a" / "x.h5", "r+") as f:
        f.attrs["dtype"] = "float32"
    res = cmp.compare_trees(a, b)
    assert not res["data"] and list(res["attrs"]) == ["a/x.h5"]
    assert cmp.main([str(a), str(b)]) == 0
    assert not cmp.compare_trees(a, b, ignore_attrs=("dtype",))["attrs"]
