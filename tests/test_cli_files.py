"""`c3dfeat info`, `repair`, `export` and layer aliases wherever a feature file is read."""
from __future__ import annotations

import csv
import json
import os

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from c3dfeat.cli import cli
from c3dfeat.store import FeatureFile, write_matrices
from tests.test_store import _WRITER, _run_and_kill


def _feats(path, model="c3d", layer="fc6", n_per=8, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    ids = [f"{c}/v{i}.avi" for c in ("a", "b", "c") for i in range(n_per)]
    y = np.repeat(np.arange(3), n_per)
    X = np.maximum(rng.standard_normal((3, dim))[y] * 3 + rng.standard_normal((len(ids), dim)), 0)
    write_matrices(path, ids, {model: {layer: X}}, {"kind": "test"})
    return ids, X


@pytest.mark.parametrize("model,stored,alias", [("c3d", "fc6", "fc6-1"), ("r2plus1d_18", "pool5", "final_avg"),
                                                ("r2plus1d_18", "pool5", "avgpool")])
def test_layer_aliases_resolve_in_every_reading_command(tmp_path, model, stored, alias):
    f = tmp_path / "f.h5"
    ids, X = _feats(f, model, stored)
    r = CliRunner()
    res = r.invoke(cli, ["linear-eval", str(f), "--layer", alias, "--folds", "2", "--C", "1", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["layer"] == stored
    res = r.invoke(cli, ["pca", str(f), "--layer", alias, "--dims", "2", "--folds", "2", "--C", "1", "--json"])
    assert res.exit_code == 0, res.output
    res = r.invoke(cli, ["tsne", str(f), "--layer", alias, "--plot", str(tmp_path / "t.png"),
                         "--perplexity", "5"])
    assert res.exit_code == 0, res.output
    res = r.invoke(cli, ["export", str(f), "--layer", alias, "-o", str(tmp_path / "x.npy")])
    assert res.exit_code == 0, res.output
    np.testing.assert_allclose(np.load(tmp_path / "x.npy"), X, rtol=1e-6)
    res = r.invoke(cli, ["linear-eval", str(f), "--layer", "fc9", "--folds", "2"])
    assert res.exit_code == 1 and stored in res.output  # unknown: the stored layers are listed


def test_export_formats_with_ids(tmp_path):
    f = tmp_path / "f.h5"
    ids, X = _feats(f)
    res = CliRunner().invoke(cli, ["export", str(f), "-o", str(tmp_path / "x.csv")])
    assert res.exit_code == 0, res.output
    with open(tmp_path / "x.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows[0][:2] == ["id", "label"] and [r[0] for r in rows[1:]] == ids
    np.testing.assert_allclose(np.array(rows[1:])[:, 2:].astype(float), X, rtol=1e-5)
    res = CliRunner().invoke(cli, ["export", str(f), "-o", str(tmp_path / "x.npz")])
    assert res.exit_code == 0
    with np.load(tmp_path / "x.npz") as z:
        assert list(z["ids"]) == ids and z["X"].shape == X.shape
    res = CliRunner().invoke(cli, ["export", str(f), "-o", str(tmp_path / "x.xyz")])
    assert res.exit_code == 1 and ".npy" in res.output and "Traceback" not in res.output


def test_info_shows_state_and_repair_fixes_a_killed_file(tmp_path):
    p = tmp_path / "k.h5"
    _run_and_kill(_WRITER.format(tests=os.path.dirname(__file__)), p)
    res = CliRunner().invoke(cli, ["info", str(p)])
    assert res.exit_code == 0, res.output
    out = " ".join(res.stdout.split())
    assert "state: needs-repair" in out and "c3dfeat repair" in out
    assert json.loads(CliRunner().invoke(cli, ["info", str(p), "--json"]).stdout)["state"] == "needs-repair"
    with pytest.raises(OSError):
        h5py.File(p, "r")
    res = CliRunner().invoke(cli, ["repair", str(p)])
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith(f"repaired {p}") and "committed videos kept" in res.stdout
    with h5py.File(p, "r") as f:  # plain h5py now
        n = int(f["committed"][0])
    with FeatureFile(p) as ff:
        assert ff.num_videos == n and ff.state == "incomplete"
    res = CliRunner().invoke(cli, ["repair", str(p)])
    assert res.exit_code == 0 and "needed no repair" in res.stdout
    res = CliRunner().invoke(cli, ["info", str(p)])
    assert "state: incomplete" in " ".join(res.stdout.split())


@pytest.mark.parametrize("args", [
    ["merge", "{f}", "-o", "{missing}/x.h5"],
    ["export", "{f}", "-o", "{missing}/x.npy"],
    ["pca", "{f}", "--dims", "2", "-o", "{missing}/r.h5"],
    ["pca", "{f}", "--dims", "2", "--plot", "{missing}/p.png"],
    ["tsne", "{f}", "--plot", "{missing}/t.png"],
    ["tsne", "{f}", "-o", "{missing}/t.csv"],
    ["weights", "convert", "{f}", "--model", "c3d", "-o", "{missing}/c3d.pth"],
])
def test_output_in_a_missing_folder_is_one_line(tmp_path, args):
    f = tmp_path / "f.h5"
    _feats(f)
    missing = tmp_path / "nope"
    res = CliRunner().invoke(cli, [a.format(f=f, missing=missing) for a in args])
    assert res.exit_code == 2, res.output
    assert res.output.startswith("Error: the folder of ") and len(res.output.strip().splitlines()) == 1
    assert "does not exist" in res.output and not missing.exists()
