"""Smoke tests of the benchmark scripts that must keep working unattended.

``bench/gpu_check.sh --dry-run`` is the CPU form of the one-command GPU check (run unchanged on a
lent GPU machine), and ``bench/throughput.py --quick`` is the EGNN throughput benchmark at tiny
sizes. Both write JSON; the tests check its structure, not any timing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("adjoint_core_egnn")
pytest.importorskip("adjoint_core_particles")


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def test_throughput_quick_writes_json(tmp_path):
    out = tmp_path / "throughput.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "throughput.py"), "--quick", "--threads", "1",
         "--out", str(out)], capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert json.loads(proc.stdout) == res  # the same JSON on stdout
    assert res["quick"] is True
    m = res["machine"]
    assert m["torch"] and m["cpu_model"] and m["cpu_count"] >= 1
    cpu = [r for r in res["rows"] if r["device"] == "cpu"]
    assert {r["size"] for r in cpu} == {"dw4", "lj13"} and {r["threads"] for r in cpu} == {1}
    for r in cpu:
        assert r["sde_step_s"] > 0 and r["train_step_s"] > 0
        assert r["edges_per_call"] == r["batch"] * r["n_particles"] * (r["n_particles"] - 1)
    import torch

    if not torch.cuda.is_available():  # CUDA is skipped cleanly, and said so
        assert any(s.startswith("cuda:") for s in res["skipped"])
        assert all(r["device"] == "cpu" for r in res["rows"])


@pytest.mark.slow  # ~30 s of CPU time: five Python processes, each importing the plugins
@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                    reason="needs bash and coreutils' timeout")
def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / "gpu"
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run", str(out)],
                          capture_output=True, text=True, env=_env(), timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] and summary["dry_run"]
    stages = summary["stages"]
    assert set(stages) == {"environment", "cuda_tests", "nccl", "throughput", "lj13_run"}
    assert all(s["status"] == "ok" for s in stages.values()), stages
    env = json.loads((out / "environment.json").read_text())
    assert env["dry_run"] and env["machine"]["torch"]
    tests = json.loads((out / "cuda_tests.json").read_text())
    assert tests["pytest_exit"] == 0 and tests["cases"]
    nccl = json.loads((out / "nccl.json").read_text())
    assert nccl["ok"] and nccl["all_reduce_ok"] and nccl["library_context"]["reused_group"]
    thr = json.loads((out / "throughput.json").read_text())
    assert thr["rows"] and thr["quick"]
    run = json.loads((out / "lj13_run.json").read_text())
    assert run["epochs"] >= 1 and run["energy_evals"] > 0 and run["overrides"]["dry_run"]
    assert run["config"] == "bench/configs/lj13_paper.yaml"
    for key in ("energy_w2", "geometric_w2_papers", "path_ess"):
        assert key in run["metrics"]
