"""brainrecon.report: tables from fabricated per-subject evaluation CSVs, figures from fabricated
images.h5 files, and the target lists the workflow rules use.

Means and s.d. are recomputed here from the CSVs with numpy; paper rows are checked against the
numbers of SPEC.md §3/§4; figure geometry against the documented layout.
"""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from brainrecon.evaluate.plan import BRAINDIFFUSER_COLUMNS, TAKAGI_COLUMNS, evaluation_files
from brainrecon.report.figures import fig_metric_bars, fig_samples, fig_subjects, fig_variants, select_images
from brainrecon.report.tables import build_table, read_eval_csvs, write_table
from brainrecon.reconstruct.plan import method_plans as method_plan
from brainrecon.report.plan import figure_plan, table_files

SUBJECTS = ["01", "02", "05"]


def write_eval_csv(path, method, variant, subject, values, convention="braindiffuser", n_images=10, n_samples=1,
                   subset="all", exclusion="", n_excluded=0, tn_convention="takagi"):
    path.parent.mkdir(parents=True, exist_ok=True)
    row = {"method": method, "variant": variant, "subject": subject, "weights": "tiny", "subset": subset,
           "exclusion": exclusion, "n_excluded": n_excluded, "convention": convention, "n_images": n_images,
           "n_samples": n_samples, **values}
    if any(k.startswith("TN-") for k in values):  # as the evaluation writes it
        row["tn_convention"] = tn_convention
    pd.DataFrame([row]).to_csv(path, index=False)
    return path


@pytest.fixture()
def bd_csvs(tmp_path):
    """Brain-Diffuser variants full / only_vdvae x subjects 01, 02, 05 + avg with random metric values."""
    rng = np.random.default_rng(0)
    paths, values = [], {}
    for v in ("only_vdvae", "full"):  # written in the "wrong" order: the table follows variant_order
        for s in SUBJECTS + ["avg"]:
            vals = {m: float(rng.uniform(0.1, 0.99)) for m in BRAINDIFFUSER_COLUMNS}
            values[(v, s)] = vals
            paths.append(write_eval_csv(tmp_path / "evaluate" / "braindiffuser" / v / f"subj{s}.csv",
                                        "braindiffuser", v, s, vals))
    return paths, values


ORDER = {"braindiffuser": ["full", "only_vdvae"], "takagi": ["zc", "t"]}


# --------------------------------------------------------------------------- tables
def test_table1_mean_and_sd_over_subjects(tmp_path, bd_csvs):
    paths, values = bd_csvs
    out = tmp_path / "tables"
    write_table("braindiffuser_table1", paths, out / "t.csv", out / "t.md", out / "t.html", variant_order=ORDER)
    df = pd.read_csv(out / "t.csv", dtype={"subjects": str})
    ours = df[df["source"] == "ours"]
    assert ours["variant"].tolist() == ["full", "full", "only_vdvae", "only_vdvae"]
    for v in ("full", "only_vdvae"):
        row = ours[(ours["variant"] == v) & (ours["subjects"] == "01, 02, 05")].iloc[0]
        avg = ours[(ours["variant"] == v) & (ours["subjects"] == "subject average")].iloc[0]
        assert row["n_subjects"] == 3 and row["convention"] == "braindiffuser"
        for m in BRAINDIFFUSER_COLUMNS:
            xs = np.array([values[(v, s)][m] for s in SUBJECTS])
            assert row[m] == pytest.approx(xs.mean(), abs=1e-12)
            assert row[f"{m} sd"] == pytest.approx(xs.std(ddof=1), abs=1e-12)
            assert avg[m] == pytest.approx(values[(v, "avg")][m], abs=1e-12)
            assert np.isnan(avg[f"{m} sd"])
    # the paper's row (SPEC §3: mean of subjects 1, 2, 5, 7) is there, marked as paper
    paper = df[df["source"].str.startswith("paper")]
    assert len(paper) == 1
    p = paper.iloc[0]
    assert (p["PixCorr"], p["SSIM"], p["AlexNet(2)"], p["AlexNet(5)"], p["Inception"], p["CLIP"], p["EffNet-B"],
            p["SwAV"]) == (0.254, 0.356, 0.942, 0.962, 0.872, 0.915, 0.775, 0.423)

    md = (out / "t.md").read_text()
    assert "`braindiffuser`" in md and "224 x 224" in md  # the preprocessing convention is stated
    # and the paper's (Brain-Diffuser's Table 1 came from its published convention, not this one)
    assert "came from convention `braindiffuser_published` - NOT ours" in md
    ours_at, paper_at = md.index("## This pipeline"), md.index("## Reported in the papers")
    assert ours_at < paper_at
    assert "| 94.2 | 96.2 | 87.2 | 91.5 |" in md[paper_at:]  # identification in %, paper style
    assert "AlexNet(2) ↑ (%)" in md and "EffNet-B ↓" in md and "SwAV ↓" in md
    xs = np.array([values[("full", s)]["AlexNet(2)"] for s in SUBJECTS])
    assert f"{100 * xs.mean():.1f} ± {100 * xs.std(ddof=1):.1f}" in md[ours_at:paper_at]
    html = (out / "t.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "Reported in the papers" in html and "braindiffuser" in html


def test_subject_table_rows(tmp_path, bd_csvs):
    paths, values = bd_csvs
    t = build_table("braindiffuser_subjects", paths, variant_order=ORDER)
    assert len(t.ours) == 2 * (len(SUBJECTS) + 1)
    assert t.ours["subject"].tolist()[:4] == ["01", "02", "05", "avg"]
    for _, r in t.ours.iterrows():
        for m in BRAINDIFFUSER_COLUMNS:
            assert r[m] == pytest.approx(values[(r["variant"], r["subject"])][m])
    # SPEC §3: subject 1 full and Only-VDVAE rows
    paper = t.paper.set_index("variant")
    assert paper.loc["full", "PixCorr"] == 0.305 and paper.loc["only_vdvae", "CLIP"] == 0.711


def test_exclusion_table_is_labelled(tmp_path):
    paths = []
    for s in SUBJECTS:
        paths.append(write_eval_csv(tmp_path / f"subj{s}_excl-laion.csv", "braindiffuser", "full", s,
                                    {"PixCorr": 0.3, "CLIP": 0.9}, subset="excl-laion",
                                    exclusion="lists/laion.txt", n_excluded=2, n_images=8))
    t = build_table("braindiffuser_table1", paths)
    assert t.suffix == "_excl-laion"
    assert t.metrics == ["PixCorr", "CLIP"]
    notes = " ".join(t.notes)
    assert "lists/laion.txt" in notes and "2 excluded" in notes
    assert t.ours.iloc[0]["n_images"] == "8"


def test_takagi_and_methods_tables(tmp_path, bd_csvs):
    paths, _ = bd_csvs
    rng = np.random.default_rng(1)
    tn = []
    for v in ("t", "zc"):
        for s in SUBJECTS:
            vals = {m: float(rng.uniform(0.5, 1)) for m in list(BRAINDIFFUSER_COLUMNS) + list(TAKAGI_COLUMNS)}
            tn.append(write_eval_csv(tmp_path / "tn" / v / f"subj{s}.csv", "takagi", v, s, vals, n_samples=5))
    t = build_table("takagi_table1", paths + tn, variant_order=ORDER)
    assert t.metrics == list(TAKAGI_COLUMNS)
    assert t.ours["variant"].tolist() == ["zc", "t"] and set(t.ours["method"]) == {"takagi"}
    # Takagi Table 1 (SPEC §4): averages, CLIP-late / CNN-late / Inception of baseline, +T, +T+G, +T+G+D
    p = t.paper.set_index("label")
    assert p["TN-CLIP-late"].tolist() == [0.768, 0.841, 0.853, 0.866]
    assert p["TN-AlexNet-late"].tolist() == [0.818, 0.915, 0.926, 0.898]
    assert p["TN-Inception"].tolist() == [0.743, 0.858, 0.864, 0.843]
    md_cells = [c for c in t.ours.columns if c.startswith("TN-")]
    assert md_cells  # TN columns present with their sd
    # every metric column's convention is named: the TN- columns' in the table and in a note
    assert set(t.ours["tn_convention"]) == {"takagi"}
    (note,) = [n for n in t.notes if n.startswith("Convention of TN-")]
    assert "`takagi`" in note and "CenterCrop(299)" in note and "CLIPProcessor" in note
    m = build_table("methods_table1", paths + tn, method_order=["braindiffuser", "takagi"], variant_order=ORDER)
    assert m.metrics == list(BRAINDIFFUSER_COLUMNS)
    assert m.ours["method"].tolist() == ["braindiffuser"] * 4 + ["takagi"] * 2
    assert not [n for n in t.notes if "not a row of the paper" in n]


def test_our_variants_are_labelled_as_ours(tmp_path):
    """td (+T+D from X_z, no +G) is not the paper's: its label says so and every table showing it has a note."""
    from brainrecon.report.plan import variant_label
    from brainrecon.report.tables import render_markdown

    rng = np.random.default_rng(2)
    csvs = [write_eval_csv(tmp_path / v / f"subj{s}.csv", "takagi", v, s,
                           {m: float(rng.uniform(0.5, 1)) for m in TAKAGI_COLUMNS}, n_samples=5)
            for v in ("zc", "td") for s in SUBJECTS]
    t = build_table("takagi_table1", csvs, variant_order={"takagi": ["zc", "td"]})
    assert variant_label("takagi", "td") == "+T+D (ours)"
    assert "+T+D (ours)" in t.ours["label"].tolist()
    (note,) = [n for n in t.notes if "not a row of the paper" in n]
    assert "+T+G+D" in note and "X_z" in note
    assert note in render_markdown(t)
    # the paper's rows keep their own labels; none is called +T+D
    assert "+T+D" not in t.paper["label"].tolist()


def test_tables_refuse_inconsistent_inputs(tmp_path, bd_csvs):
    paths, _ = bd_csvs
    other = write_eval_csv(tmp_path / "x.csv", "braindiffuser", "no_text", "01", {"PixCorr": 0.2},
                           convention="mindeye")
    with pytest.raises(ValueError, match="mix convention"):
        read_eval_csvs(paths + [other])
    with pytest.raises(ValueError, match="two evaluation CSVs for braindiffuser/full/subj01"):
        read_eval_csvs(paths + [paths[4]])
    bad = tmp_path / "bad.csv"
    pd.DataFrame([{"method": "braindiffuser", "PixCorr": 0.1}]).to_csv(bad, index=False)
    with pytest.raises(KeyError, match="lacks columns"):
        read_eval_csvs([bad])
    with pytest.raises(ValueError, match="no evaluation rows of method"):
        build_table("takagi_table1", paths)
    out = tmp_path / "tables"
    with pytest.raises(ValueError, match="mix convention"):
        write_table("braindiffuser_table1", paths + [other], out / "t.csv", out / "t.md", out / "t.html")
    assert not out.exists() or list(out.iterdir()) == []  # nothing half-written


# --------------------------------------------------------------------------- figures
@pytest.fixture()
def images_world(tmp_path):
    rng = np.random.default_rng(2)
    brick = rng.integers(0, 256, (20, 40, 40, 3), dtype=np.uint8)
    # flat-coloured GT so a grid cell's mean colour identifies it
    brick[:] = rng.integers(0, 256, (20, 1, 1, 3), dtype=np.uint8)
    bp = tmp_path / "brick.hdf5"
    with h5py.File(bp, "w") as f:
        f["imgBrick"] = brick
    ids = np.array([2, 5, 7, 11, 13, 17])

    def recon(name, samples=None):
        shape = (len(ids), 32, 32, 3) if samples is None else (len(ids), samples, 32, 32, 3)
        p = tmp_path / name / "images.h5"
        p.parent.mkdir(parents=True)
        with h5py.File(p, "w") as f:
            f["images"] = rng.integers(0, 256, shape, dtype=np.uint8)
            f["nsd_ids"] = ids[::-1]
            f["seeds"] = np.arange(len(ids))
        return p

    return {"brick": bp, "gt": brick, "ids": ids, "recon": recon, "tmp": tmp_path}


LAYOUT = dict(cell_in=0.5, label_in=1.0, header_in=0.25, dpi=40)


def _expected_px(rows, cols):
    return (round(LAYOUT["dpi"] * (LAYOUT["label_in"] + cols * LAYOUT["cell_in"])),
            round(LAYOUT["dpi"] * (LAYOUT["header_in"] + rows * LAYOUT["cell_in"])))


def _cell_mean(png, r, c):
    img = np.asarray(Image.open(png).convert("RGB")).astype(float)
    d = LAYOUT["dpi"]
    x0 = round(d * (LAYOUT["label_in"] + c * LAYOUT["cell_in"]))
    y0 = round(d * (LAYOUT["header_in"] + r * LAYOUT["cell_in"]))
    side = round(d * LAYOUT["cell_in"])
    return img[y0 + 3 : y0 + side - 3, x0 + 3 : x0 + side - 3].reshape(-1, 3).mean(0)


def test_subject_grid(images_world):
    w = images_world
    paths = {"Subject average": w["recon"]("avg"), "Subject 01": w["recon"]("s1"), "Subject 02": w["recon"]("s2")}
    out = w["tmp"] / "fig" / "subjects.png"
    info = fig_subjects(w["brick"], paths, out, n_images=4, **LAYOUT)
    assert out.stat().st_size > 0
    assert (info["rows"], info["cols"]) == (1 + 3, 4)
    assert Image.open(out).size == _expected_px(4, 4)
    # 4 ids evenly spaced over the sorted common ids [2, 5, 7, 11, 13, 17]
    assert list(info["nsd_ids"]) == [2, 7, 11, 17]
    # the first row shows the ground truth of the column's image (flat colour)
    for c, nsd in enumerate(info["nsd_ids"]):
        assert np.allclose(_cell_mean(out, 0, c), w["gt"][nsd, 0, 0], atol=3)


def test_variant_and_sample_grids(images_world):
    w = images_world
    paths = {"full": w["recon"]("full"), "Only-VDVAE": w["recon"]("vdvae"), "w/o text": w["recon"]("notext")}
    out = w["tmp"] / "fig" / "variants.png"
    info = fig_variants(w["brick"], paths, out, images=[13, 5], **LAYOUT)
    assert (info["rows"], info["cols"]) == (2, 1 + 3)
    assert Image.open(out).size == _expected_px(2, 4)
    assert np.allclose(_cell_mean(out, 1, 0), w["gt"][5, 0, 0], atol=3)  # row 2 = nsdId 5, column 1 = GT

    sp = w["recon"]("takagi", samples=4)
    out = w["tmp"] / "fig" / "samples.png"
    info = fig_samples(w["brick"], sp, out, n_images=3, max_samples=3, **LAYOUT)
    assert (info["rows"], info["cols"]) == (3, 1 + 3)
    assert Image.open(out).size == _expected_px(3, 4)
    with pytest.raises(ValueError, match=r"report images \[3\] are not reconstructed"):
        select_images([sp], images=[3, 5])


def test_metric_bars(tmp_path, bd_csvs):
    paths, _ = bd_csvs
    out = tmp_path / "bars.png"
    info = fig_metric_bars(paths, out, variant_order=ORDER)
    assert out.stat().st_size > 0 and Image.open(out).size == info["size_px"]
    assert info["panels"] == len(BRAINDIFFUSER_COLUMNS)
    assert info["bars"] == len(BRAINDIFFUSER_COLUMNS) * 2  # one bar per variant (subject average not used)
    assert info["labels"] == ["Brain-Diffuser: full", "Brain-Diffuser: Only-VDVAE"]


# --------------------------------------------------------------------------- targets
def _config(**over):
    """A validated config (schema defaults filled in) with two subjects, Brain-Diffuser only unless
    ``methods={"takagi": {...}}`` turns Takagi on."""
    from brainrecon.config import validate_config

    cfg = {
        "nsd": {"subjects": [1, 2], "source": "synthetic", "root": "resources/x", "sessions": 2},
        "prepare": {},
        "methods": {"braindiffuser": {"enabled": True, "subject_average": True, "variants": ["full", "no_text"]},
                    "takagi": {"enabled": False}},
        "evaluate": {"exclude": None, "per_image": True},
        "report": {"subject": None},
    }
    for k, v in over.items():
        if k == "methods":
            for m, mv in v.items():
                cfg["methods"][m] = {**cfg["methods"].get(m, {}), "enabled": True, **mv}
        else:
            cfg[k] = {**cfg.get(k, {}), **v}
    return validate_config(cfg, check_paths=False)


def test_table_kinds_agree():
    from brainrecon.report.tables import TABLES
    from brainrecon.report.plan import TABLE_TITLES, table_names

    assert set(TABLE_TITLES) == set(TABLES)
    cfg = _config(methods={"takagi": {"variants": ["zc"]}})
    assert set(table_names(cfg)) == set(TABLES)


def test_targets_follow_the_config():
    cfg = _config()
    (plan,) = method_plan(cfg)  # takagi disabled: skipped
    assert plan.subjects == ("01", "02", "avg") and not plan.multi_sample
    ev = evaluation_files(cfg)
    assert len(ev) == 2 * 3 and "results/evaluate/braindiffuser/no_text/subjavg.csv" in ev
    assert evaluation_files(cfg, excluded=True) == []
    assert table_files(cfg, exts=("csv",)) == ["results/tables/braindiffuser_table1.csv",
                                               "results/tables/braindiffuser_subjects.csv",
                                               "results/tables/methods_table1.csv"]
    figs = figure_plan(cfg)
    assert set(figs) == {"results/figures/braindiffuser_full_subjects.png",
                         "results/figures/braindiffuser_variants_subj01.png", "results/figures/metrics_bars.png"}
    assert list(figs["results/figures/braindiffuser_full_subjects.png"]["rows"]) == [
        "Subject average", "Subject 01", "Subject 02"]

    cfg = _config(evaluate={"exclude": "x/LAION overlap.csv"}, report={"subject": 2},
                  methods={"takagi": {"variants": ["zc", "t"]}})
    plans = method_plan(cfg)
    assert [p.method for p in plans] == ["braindiffuser", "takagi"]
    assert plans[1].subjects == ("01", "02") and plans[1].multi_sample
    assert "results/evaluate/takagi/t/subj02_excl-LAION_overlap.csv" in evaluation_files(cfg, excluded=True)
    tables = table_files(cfg, exts=("md",))
    assert "results/tables/takagi_table1_excl-LAION_overlap.md" in tables and len(tables) == 2 * 5
    figs = figure_plan(cfg)
    assert "results/figures/takagi_t_samples_subj02.png" in figs
    assert "results/figures/takagi_zc_subjects.png" in figs  # the CVPR method is the main Takagi variant
    assert "results/figures/braindiffuser_variants_subj02.png" in figs

    cfg = _config(methods={"braindiffuser": {"enabled": False}})
    assert method_plan(cfg) == [] and table_files(cfg) == [] and figure_plan(cfg) == {}
    with pytest.raises(ValueError, match="report.subject: 3"):
        figure_plan(_config(report={"subject": 3}))
