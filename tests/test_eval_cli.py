"""CLI: `c3dfeat linear-eval`, `pca`, `tsne` as written (defaults), official splits, errors."""
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from c3dfeat.cli import cli
from c3dfeat.store import write_matrices

SPLITS = Path(__file__).parent / "data" / "splits"


def _feats(path, ids, y, dim=24, seed=0, model="c3d", layer="fc6", sep=2.0):
    rng = np.random.default_rng(seed)
    K = int(max(y)) + 1
    X = np.maximum(rng.standard_normal((K, dim))[y] * sep + rng.standard_normal((len(ids), dim)), 0)
    return write_matrices(path, ids, {model: {layer: X}}, {"kind": "test", "seed": seed})


@pytest.fixture
def folder_feats(tmp_path, monkeypatch):
    """feats.h5 in the cwd with ids `<class>/<clip>` as `c3dfeat extract videos/` writes them."""
    monkeypatch.chdir(tmp_path)
    ids = [f"{c}/v_{c}_{i:02d}.avi" for c in ("jump", "run", "walk") for i in range(10)]
    _feats(tmp_path / "feats.h5", ids, np.repeat(np.arange(3), 10))
    return tmp_path


def test_linear_eval_no_arguments(folder_feats):
    res = CliRunner().invoke(cli, ["linear-eval"])
    assert res.exit_code == 0, res.output
    out = " ".join(res.stdout.split())  # rich wraps the title at the terminal width
    assert "labels from parent folders, stratified 5-fold CV" in out
    assert "mean ± std" in out and "fold5" in out


def test_linear_eval_json(folder_feats):
    res = CliRunner().invoke(cli, ["linear-eval", "--json", "--folds", "3", "--solver", "liblinear"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert {"splits", "mean_top1", "std_top1", "mean_class_accuracy"} <= set(d)
    assert len(d["splits"]) == 3 and d["solver"] == "liblinear" and d["layer"] == "fc6"
    assert d["mean_top1"] == pytest.approx(np.mean([s["top1"] for s in d["splits"]]))
    assert 80 <= d["mean_top1"] <= 100  # percent, well separated synthetic classes
    assert all(set(s["cv"]) == {"0.01", "0.1", "1.0", "10.0", "100.0", "1000.0"} for s in d["splits"])
    res = CliRunner().invoke(cli, ["linear-eval", "--json", "--C", "1", "--folds", "2"])
    assert all(s["C"] == 1.0 and s["cv"] == {} for s in json.loads(res.stdout)["splits"])


def test_pca_no_arguments_but_dims(folder_feats):
    res = CliRunner().invoke(cli, ["pca", "--dims", "10"])
    assert res.exit_code == 0, res.output
    assert "PCA + linear SVM" in " ".join(res.stdout.split())
    res = CliRunner().invoke(cli, ["pca", "--dims", "2", "--dims", "8", "--json", "-o", "r.h5",
                                   "--plot", "p.png"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert [r["dims"] for r in d["dims"]] == [2, 8]
    assert d["dims"][0]["explained_variance"] < d["dims"][1]["explained_variance"]
    assert Path("p.png").stat().st_size > 1000
    res = CliRunner().invoke(cli, ["linear-eval", "r.h5", "--layer", "fc6_pca8", "--json"])
    assert res.exit_code == 0, res.output


def test_tsne_plot(folder_feats):
    res = CliRunner().invoke(cli, ["tsne", "--plot", "t.png", "--perplexity", "5"])
    assert res.exit_code == 0, res.output
    assert Path("t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_feature_file_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli, ["linear-eval"])
    assert res.exit_code == 1
    out = " ".join(res.output.split())
    assert "feats.h5 not found" in out and "c3dfeat extract videos/ -o feats.h5" in out


def test_no_labels_no_splits_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _feats(tmp_path / "feats.h5", [f"v{i}.avi" for i in range(12)], np.arange(12) % 2)
    res = CliRunner().invoke(cli, ["pca", "--dims", "10"])
    assert res.exit_code == 1
    out = " ".join(res.output.split())
    assert "no labels" in out and "--dataset" in out and "--labels" in out


def test_ucf101_splits_via_cli(tmp_path):
    from tests.test_eval_splits import UCF_IDS

    ids = ["UCF-101/" + v for v in UCF_IDS]  # extract given the parent folder: prefix differs
    _feats(tmp_path / "u.h5", ids, np.repeat(np.arange(3), 3), sep=4.0)
    args = ["linear-eval", str(tmp_path / "u.h5"), "--dataset", "ucf101", "--splits",
            str(SPLITS / "ucfTrainTestlist"), "--C", "1", "--json"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert [(s["name"], s["n_train"], s["n_test"]) for s in d["splits"]] == [("split1", 6, 3), ("split2", 4, 5)]
    # a listed video missing from the file: error with counts, or skipped with --allow-missing
    _feats(tmp_path / "m.h5", ids[1:], np.repeat(np.arange(3), 3)[1:], sep=4.0)
    args[1] = str(tmp_path / "m.h5")
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1
    assert "2 of 18 listed videos are not in the feature file" in " ".join(res.output.split())
    res = CliRunner().invoke(cli, args + ["--allow-missing"])
    assert res.exit_code == 0, res.output
    assert "skipped 1 listed videos" in res.stderr
    assert json.loads(res.stdout)["splits"][0]["n_test"] == 2


def test_hmdb51_splits_via_cli(tmp_path):
    from tests.test_eval_splits import HMDB_IDS

    _feats(tmp_path / "h.h5", HMDB_IDS, np.array([0, 0, 0, 0, 1, 1, 1]), sep=4.0)
    res = CliRunner().invoke(cli, ["linear-eval", str(tmp_path / "h.h5"), "--dataset", "hmdb51",
                                   "--splits", str(SPLITS / "testTrainMulti_7030_splits"),
                                   "--split", "1", "--C", "1", "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert [(s["name"], s["n_train"], s["n_test"]) for s in d["splits"]] == [("split1", 4, 2)]


def test_fusion_via_cli(tmp_path):
    ids = [f"{c}/v{i}.avi" for c in ("a", "b") for i in range(12)]
    y = np.repeat(np.arange(2), 12)
    _feats(tmp_path / "rgb.h5", ids, y, model="c3d", layer="fc6")
    _feats(tmp_path / "flow.h5", ids[::-1], y[::-1], seed=1, model="r2plus1d_18", layer="final_avg")
    res = CliRunner().invoke(cli, ["linear-eval", "--features", f"{tmp_path / 'rgb.h5'}:c3d/fc6",
                                   "--features", f"{tmp_path / 'flow.h5'}:r2plus1d_18/final_avg",
                                   "--fusion", "gblend", "--folds", "3", "--epochs", "30", "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["modalities"] == ["rgb.h5:c3d/fc6", "flow.h5:r2plus1d_18/final_avg"]
    assert len(d["splits"]) == 3 and len(d["splits"][0]["gblend_weights"]) == 3
    assert sum(d["splits"][0]["gblend_weights"]) == pytest.approx(1.0)
    assert {"mean_uni_top1", "mean_concat_top1", "mean_gblend_top1"} <= set(d)
    res = CliRunner().invoke(cli, ["linear-eval", "--features", str(tmp_path / "rgb.h5"), "--fusion", "concat"])
    assert res.exit_code == 2 and "at least two" in res.output


def test_help_has_examples():
    for cmd in ("linear-eval", "pca", "tsne"):
        res = CliRunner().invoke(cli, [cmd, "--help"])
        assert res.exit_code == 0 and res.output.startswith("Usage:") and "Examples:" in res.output
