"""scripts/bench_gpu.py, the one command a GPU machine runs, checked on the CPU with its own
`--device cpu --quick` so that a GPU machine's few minutes are not lost to a broken script: every
row of the table is there, with figures (~20 s here; `--no-check`: tests/test_cuda.py runs in
`make test` anyway). The GPU figures themselves can only come from a GPU machine."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("av")


def test_bench_gpu_prints_its_table_on_the_cpu(tmp_path):
    out = tmp_path / "rows.json"
    cmd = [sys.executable, str(REPO / "scripts" / "bench_gpu.py"), "--device", "cpu", "--quick", "--no-check",
           "--json", str(out), "--cache-dir", str(tmp_path / "cache")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = json.loads(out.read_text())
    kinds = [(r["kind"], r["dtype"], r.get("decoder", "").split(" ")[0]) for r in rows]
    assert kinds[:2] == [("model only", "fp32", ""), ("model only", "bf16", "")]
    for size in ("320x240", "1280x720"):
        assert (f"end to end {size}", "fp32", "pyav") in kinds
    for r in rows:
        assert r["clips_per_s"] > 0 and r["model"] == "c3d", r
        if r["kind"].startswith("end to end"):
            assert r["clips"] > 0 and 0 < r["ratio_to_model_only"] and r["cores_per_1000_clips_s"] > 0, r
    table = res.stdout[res.stdout.index("what "):]
    assert len([ln for ln in table.splitlines() if ln.startswith(("model only", "end to end"))]) == len(rows)
