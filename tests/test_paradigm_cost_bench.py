"""benchmarks/paradigm_cost.py on seconds-long settings: every row builds and trains, the JSON says what it
measured (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "paradigm_cost.py"


def test_paradigm_cost_quick(tmp_path):
    out = tmp_path / "cost.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--student", "resnet8", "--teacher", "resnet14",
                           "--images", "32", "--batch", "16", "--repeats", "1", "--threads", "1",
                           "--json", str(out), "--tmp", str(tmp_path / "teachers")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["rows"]) == {"ce", "dml", "dml_sequential", "kd", "mtkd", "mtkd_cached"}
    assert result["rows"]["ce"]["vs_ce"] == 1.0 and all(r["median_epoch_s"] > 0 for r in result["rows"].values())
    assert "2-peer DML epoch" in done.stdout
