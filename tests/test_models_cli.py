"""`c3dfeat models`: table and JSON, through click."""
from __future__ import annotations

import json

from click.testing import CliRunner

from c3dfeat.cli import cli
from c3dfeat.models import get_spec


def _run(*args, env=None):
    result = CliRunner().invoke(cli, ["models", *args], env=env)
    assert result.exit_code == 0, result.output
    return result.output


def test_json_lists_models_with_facts(tmp_path):
    ckpt = get_spec("r3d_18").checkpoint
    (tmp_path / ckpt.file_name).write_bytes(b"not really weights")  # presence only
    out = json.loads(_run("--json", "--weights-dir", str(tmp_path), "r3d_18", env={"C3DFEAT_WEIGHTS": ""}))
    assert [m["name"] for m in out] == ["r3d_18"]
    info = out[0]
    assert info["params"] == 33_371_472  # torchvision's documented count (models.md §3.1)
    assert abs(info["gflops"] / 2 - 40.697) < 0.1  # documented 40.697 G multiply-adds
    assert info["clip"] == {"clip_len": 16, "frame_step": 1, "stride": 16, "fps": 15.0,
                            "resize": [128, 171], "crop_size": 112, "channel_order": "RGB"}
    assert [(layer["name"], layer["dim"]) for layer in info["layers"]] == [
        ("res5", 512 * 2 * 7 * 7), ("pool5", 512), ("logits", 400)]
    (c,) = info["checkpoints"]
    assert c["tag"] == "kinetics400" and c["default"] and c["classes"] == 400 and c["present"] is True


def test_json_reports_absent_weights(tmp_path):
    out = json.loads(_run("--json", "--weights-dir", str(tmp_path), "mc3_18", env={"C3DFEAT_WEIGHTS": ""}))
    assert out[0]["checkpoints"][0]["present"] in (False, None)


def test_table_shows_every_matching_model():
    out = _run("r2plus1d_*")
    for name in ("r2plus1d_18", "r2plus1d_34", "r2plus1d_152", "r2plus1d_r50"):
        assert name in out
    assert "ig65m_8f" in out and "pool5 512" in out and "GFLOPs" in out
    assert "c3d " not in out


def test_unknown_pattern_is_bad_usage():
    result = CliRunner().invoke(cli, ["models", "--json", "nothing_like_this*"])
    assert result.exit_code == 2 and "no model matches 'nothing_like_this*'" in result.output


def test_facts_cache_is_used_and_invalidated(tmp_path, monkeypatch):
    """The second run reads params/GFLOPs from the cache; a changed spec recomputes them."""
    from c3dfeat.cli import models_cmd

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = json.loads(_run("--json", "r3d_18"))
    cache = json.loads(models_cmd.cache_path().read_text())
    assert cache["r3d_18"]["info"]["params"] == first[0]["params"]
    cache["r3d_18"]["info"]["params"] = 7  # a marker: served from the cache if the key matches
    models_cmd.cache_path().write_text(json.dumps(cache))
    assert json.loads(_run("--json", "r3d_18"))[0]["params"] == 7
    cache["r3d_18"]["key"] = "stale"
    models_cmd.cache_path().write_text(json.dumps(cache))
    assert json.loads(_run("--json", "r3d_18"))[0]["params"] == first[0]["params"]
