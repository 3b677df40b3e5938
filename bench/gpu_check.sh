#!/usr/bin/env bash
# One-command GPU check: CUDA tests, an nccl process group, the EGNN throughput on CUDA and a
# fixed-wall-time LJ-13 run with the papers' network (then sampled and scored), every figure
# written as JSON under one output folder. Sized for at most 8 minutes on one GPU.
#
# Usage (from anywhere; uses the repository's .venv, made by `make venv` / scripts/bootstrap.sh):
#
#     bash bench/gpu_check.sh [OUT_DIR]            # default: $OUT, else runs/gpu_check
#     bash bench/gpu_check.sh --dry-run [OUT_DIR]  # CPU, tiny sizes, ~1 min (tests/ runs it)
#
# Options (environment variables): GPU_CHECK_TRAIN_S (LJ-13 training wall time, default 120 s,
# shortened if the earlier stages took long), GPU_CHECK_COMPILE (1: also time torch.compile on
# LJ-13, default 1), GPU_CHECK_DEADLINE_S (the whole check, default 470 s: later stages get
# what is left, a stage with under 20 s left is not run and counts as a failure).
#
# Stages, each under its own `timeout`, each writing OUT_DIR/<stage>.json; a failing stage does
# not stop the others, and OUT_DIR/summary.json lists every stage's status and wall time:
#   environment     torch / CUDA / GPU facts (and nvidia-smi's, if present)
#   cuda_tests      pytest of the CUDA-gated tests (eSEN on CUDA vs CPU, not in the dry run;
#                   device resolution)
#   nccl            a one-rank nccl process group on cuda:0 (all_reduce, barrier), the gloo
#                   object group adjoint_core.training.distributed.init_from_env adds under
#                   nccl; with >= 2 GPUs also a 2-process `torchrun` training with device cuda
#   throughput      bench/throughput.py on CUDA (papers' sizes, batch x1 and x4; LJ-13 compiled)
#   lj13_run        bench/configs/lj13_paper.yaml (EGNN 128x5, batch 512, 1,000 SDE steps) on
#                   cuda with train.time_limit_s, then 2,000 samples scored against lj13_val
# Exit status: 0 if no stage failed (a stage skipped for lack of CUDA in --dry-run is not a
# failure), 1 otherwise. Without --dry-run on a machine without CUDA every GPU stage fails.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY=0
OUT_DIR=""
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,28p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) OUT_DIR="$arg" ;;
  esac
done
OUT_DIR="${OUT_DIR:-${OUT:-$ROOT/runs/gpu_check}}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
cd "$ROOT"
if [ ! -x .venv/bin/python ]; then
  echo "[gpu_check] no .venv: running scripts/bootstrap.sh"
  bash scripts/bootstrap.sh || exit 1
fi
PY="$ROOT/.venv/bin/python"
TRAIN_S="${GPU_CHECK_TRAIN_S:-120}"
COMPILE="${GPU_CHECK_COMPILE:-1}"
export GPU_CHECK_DRY="$DRY" GPU_CHECK_OUT="$OUT_DIR" GPU_CHECK_TRAIN_S="$TRAIN_S"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
if [ "$DRY" = 1 ]; then export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"; fi
STATUS_FILE="$OUT_DIR/.stages"
: > "$STATUS_FILE"
T_START=$(date +%s)

# the whole check, under the 8-minute slot (the CPU dry run: 900 s, for busy test machines)
if [ "$DRY" = 1 ]; then DEADLINE_S="${GPU_CHECK_DEADLINE_S:-900}"
else DEADLINE_S="${GPU_CHECK_DEADLINE_S:-470}"; fi

# run_stage NAME TIMEOUT_S COMMAND...: runs it, logs to OUT_DIR/NAME.log, records the status.
# The timeout is cut to what is left of DEADLINE_S; with under 20 s left the stage is not run.
run_stage() {
  local name="$1" limit="$2"; shift 2
  local t0 rc status left
  t0=$(date +%s)
  left=$(( DEADLINE_S - (t0 - T_START) ))
  if [ "$left" -lt 20 ]; then
    echo "$name deadline 0 0" >> "$STATUS_FILE"
    echo "[gpu_check] $name: not run, the ${DEADLINE_S}s deadline is reached"
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "[gpu_check] $name (limit ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
  rc=$?
  if [ $rc -eq 0 ]; then status=ok
  elif [ $rc -eq 77 ]; then status=skipped
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status=timeout
  else status=failed; fi
  echo "$name $status $rc $(( $(date +%s) - t0 ))" >> "$STATUS_FILE"
  echo "[gpu_check] $name: $status (exit $rc, $(( $(date +%s) - t0 )) s); log $OUT_DIR/$name.log"
  [ "$status" = failed ] || [ "$status" = timeout ] && tail -n 15 "$OUT_DIR/$name.log"
  return 0
}

# ------------------------------------------------------------------------------ environment
run_stage environment 60 "$PY" - <<'EOF'
import json, os, platform, shutil, subprocess, sys
import torch
out = os.environ["GPU_CHECK_OUT"]
sys.path.insert(0, "bench")
from throughput import machine
info = {"dry_run": os.environ["GPU_CHECK_DRY"] == "1", "machine": machine(),
        "python": sys.version, "cuda_available": torch.cuda.is_available(),
        "cuda_device_count": torch.cuda.device_count(),
        "torch_cuda_build": torch.version.cuda, "nccl_available":
        bool(torch.distributed.is_available() and torch.distributed.is_nccl_available())}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info["gpu"] = {"name": p.name, "memory_gib": p.total_memory / 2**30,
                   "capability": f"{p.major}.{p.minor}", "count": torch.cuda.device_count()}
    try:
        info["nccl_version"] = ".".join(map(str, torch.cuda.nccl.version()))
    except Exception as exc:  # noqa: BLE001
        info["nccl_version"] = f"unknown ({exc})"
if shutil.which("nvidia-smi"):
    info["nvidia_smi"] = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm",
         "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
json.dump(info, open(f"{out}/environment.json", "w"), indent=2)
print(json.dumps(info, indent=2))
if not info["dry_run"] and not torch.cuda.is_available():
    sys.exit("CUDA is not available: this torch build or machine cannot run the GPU checks "
             "(a CPU wheel of torch? see constraints.txt)")
EOF

# ------------------------------------------------------------------------------ CUDA tests
run_stage cuda_tests 150 "$PY" - <<'EOF'
import json, os, sys, xml.etree.ElementTree as ET
import pytest
out = os.environ["GPU_CHECK_OUT"]
tests = ["tests/test_distributed.py::test_launch_detection_and_device"]
if os.environ["GPU_CHECK_DRY"] != "1":  # the dry run leaves out the fairchem import (~30 s)
    tests.insert(0, "plugins/adjoint-core-esen/tests/test_esen_energy.py"
                    "::test_esen_on_gpu_matches_cpu")
xml = f"{out}/cuda_tests.xml"
rc = pytest.main(["-q", "-rA", "-p", "no:cacheprovider", f"--junitxml={xml}", *tests])
cases = []
for case in ET.parse(xml).getroot().iter("testcase"):
    outcome = "passed"
    for child in case:
        if child.tag in ("failure", "error", "skipped"):
            outcome = {"failure": "failed", "error": "error"}.get(child.tag, "skipped")
            detail = (child.get("message") or "")[:500]
            break
    else:
        detail = ""
    cases.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                  "seconds": float(case.get("time", 0)), "detail": detail})
import torch
res = {"pytest_exit": int(rc), "cases": cases, "cuda_available": torch.cuda.is_available()}
json.dump(res, open(f"{out}/cuda_tests.json", "w"), indent=2)
print(json.dumps(res, indent=2))
if int(rc) not in (0, 5):
    sys.exit(1)
if not torch.cuda.is_available():
    sys.exit(0 if os.environ["GPU_CHECK_DRY"] == "1" else 1)
if any(c["outcome"] != "passed" for c in cases):
    sys.exit("a CUDA test did not pass (skipped on a CUDA machine counts as a failure)")
EOF

# ------------------------------------------------------------------------------ nccl
run_stage nccl 120 "$PY" - <<'EOF'
import json, os, socket, sys, time
import torch
import torch.distributed as dist
from adjoint_core.training import distributed as D
out = os.environ["GPU_CHECK_OUT"]
dry = os.environ["GPU_CHECK_DRY"] == "1"
cuda = torch.cuda.is_available()
if not cuda and not dry:
    sys.exit("no CUDA")
backend = "nccl" if cuda else "gloo"  # the dry run exercises the same calls with gloo on CPU
device = torch.device("cuda", 0) if cuda else torch.device("cpu")
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
res = {"backend": backend, "device": str(device), "world_size": 1}
t0 = time.perf_counter()
if cuda:
    torch.cuda.set_device(device)
dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
res["init_s"] = time.perf_counter() - t0
x = torch.arange(4.0, device=device)
dist.all_reduce(x)
dist.barrier()
res["all_reduce_ok"] = bool(torch.equal(x.cpu(), torch.arange(4.0)))
# the library's set-up on an existing group: reuses it and adds the gloo object group
ctx = D.init_from_env("cuda" if cuda else "cpu",
                      env={"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"})
res["library_context"] = {"backend": ctx.backend, "device": str(ctx.device),
                          "world_size": ctx.world_size, "reused_group": not ctx.initialized_here,
                          "object_group": D.object_group() is not None}
if D.object_group() is not None:
    obj = [{"rank": 0}]
    dist.broadcast_object_list(obj, src=0, group=D.object_group())
    res["object_broadcast_ok"] = obj == [{"rank": 0}]
dist.destroy_process_group()
res["ok"] = res["all_reduce_ok"] and res["library_context"]["backend"] == backend
n_gpu = torch.cuda.device_count() if cuda else 0
res["multi_gpu"] = "skipped: fewer than 2 GPUs (NCCL cannot put two ranks on one GPU)"
if n_gpu >= 2:  # the real thing: 2 processes training on cuda:0 and cuda:1 with nccl
    import subprocess, yaml
    cfg = yaml.safe_load(open("examples/dw4.yaml"))
    cfg["device"] = "cuda"
    cfg["train"].update({"n_epochs": 2, "samples_per_epoch": 64, "sim_batch_size": 32,
                         "grad_steps_per_epoch": 5, "train_batch_size": 64, "n_sde_steps": 20})
    cfg["eval"] = {"reference": None}
    path = f"{out}/nccl_dw4.yaml"
    yaml.safe_dump(cfg, open(path, "w"))
    run = f"{out}/nccl_dw4_run"
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node=2", "-m", "adjoint_core.app.cli", "train", path,
                        "--out", run, "--no-progress"], capture_output=True, text=True,
                       timeout=90)
    rec = json.load(open(f"{run}/metrics.json")) if p.returncode == 0 else {}
    d = rec.get("distributed", {})
    res["multi_gpu"] = {"returncode": p.returncode, "backend": d.get("backend"),
                        "world_size": d.get("world_size"),
                        "parameters_in_sync": d.get("parameters_in_sync"),
                        "stderr_tail": p.stderr[-1500:]}
    res["ok"] = res["ok"] and p.returncode == 0 and d.get("backend") == "nccl" \
        and d.get("parameters_in_sync") is True
json.dump(res, open(f"{out}/nccl.json", "w"), indent=2)
print(json.dumps(res, indent=2))
sys.exit(0 if res["ok"] else 1)
EOF

# ------------------------------------------------------------------------------ throughput
if [ "$DRY" = 1 ]; then
  run_stage throughput 120 "$PY" bench/throughput.py --quick --devices cpu --threads 1 \
    --out "$OUT_DIR/throughput.json"
else
  run_stage throughput 150 "$PY" bench/throughput.py --devices cuda --require-cuda \
    --cuda-batch-scale 1 4 \
    --repeats 10 --warmup 3 --out "$OUT_DIR/throughput.json"
  if [ "$COMPILE" = 1 ]; then
    run_stage throughput_compile 100 "$PY" bench/throughput.py --devices cuda --sizes lj13 \
      --compile --require-cuda --cuda-batch-scale 4 --repeats 10 --warmup 3 \
      --out "$OUT_DIR/throughput_compile.json"
  fi
fi

# ------------------------------------------------------------------------------ LJ-13 run
# train for TRAIN_S, or less if the earlier stages left less than TRAIN_S + 150 s
LEFT=$(( DEADLINE_S - ($(date +%s) - T_START) - 150 ))
if [ "$LEFT" -lt "$TRAIN_S" ] && [ "$DRY" = 0 ]; then
  TRAIN_S=$(( LEFT > 30 ? LEFT : 30 )); export GPU_CHECK_TRAIN_S="$TRAIN_S"
fi
run_stage lj13_run $(( TRAIN_S + 200 )) "$PY" - <<'EOF'
import json, os, sys, time
import torch
import yaml
from adjoint_core.app.config import read_config_file
from adjoint_core.app.run import evaluate_samples, load_reference, load_run, train_run
from adjoint_core.evaluation import metrics
out = os.environ["GPU_CHECK_OUT"]
dry = os.environ["GPU_CHECK_DRY"] == "1"
limit = float(os.environ["GPU_CHECK_TRAIN_S"])
cuda = torch.cuda.is_available()
if not cuda and not dry:
    sys.exit("no CUDA")
cfg = read_config_file("bench/configs/lj13_paper.yaml")
cfg["device"] = "cuda" if cuda and not dry else "cpu"
cfg["train"]["time_limit_s"] = limit
cfg["eval"] = {"reference": None, "every": 0}  # scored below, once
n, geo = 2000, 2000
if dry:  # tiny network and budgets, same code path
    cfg["model"].update({"hidden": 8, "n_layers": 2})
    cfg["train"].update({"n_epochs": 2, "samples_per_epoch": 16, "sim_batch_size": 16,
                         "grad_steps_per_epoch": 2, "train_batch_size": 16, "n_sde_steps": 10,
                         "time_limit_s": 30.0})
    cfg["buffer"]["capacity"] = 64
    n, geo = 64, 32
path = f"{out}/lj13_run.yaml"
yaml.safe_dump(cfg, open(path, "w"), sort_keys=False)
run_dir = f"{out}/lj13_run"
sync = torch.cuda.synchronize if cfg["device"] == "cuda" else (lambda: None)
t0 = time.perf_counter()
record = train_run(path, run_dir, progress=False, log=lambda *a: None)
train_wall = time.perf_counter() - t0
sampler = load_run(run_dir)
gen = torch.Generator(device=sampler.device).manual_seed(2024)
sync()
t0 = time.perf_counter()
x, log_w = sampler.path_log_weights(n, generator=gen)
sync()
sample_s = time.perf_counter() - t0
ref = load_reference("lj13_val", sampler.space)
t0 = time.perf_counter()
m = evaluate_samples(x.cpu(), ref, sampler.energy, sampler.space, n, geo, ("papers",), seed=0)
finite = torch.isfinite(log_w)
m["path_ess"] = metrics.path_ess(log_w[finite].cpu().numpy()) if finite.any() else 0.0
c, tm = record["counters"], record["timers"]
epochs = c["epoch"]
res = {"config": "bench/configs/lj13_paper.yaml", "overrides": {
           "device": cfg["device"], "train.time_limit_s": cfg["train"]["time_limit_s"],
           "dry_run": dry},
       "device_name": torch.cuda.get_device_name(0) if cfg["device"] == "cuda" else "cpu",
       "epochs": epochs, "counters": c, "timers_s": tm, "train_command_s": train_wall,
       "seconds_per_epoch": (tm["simulate"] + tm["energy"] + tm["train"]) / max(epochs, 1),
       "energy_evals": c["energy_evals"], "sample_n": n, "sample_s": sample_s,
       "sde_steps": sampler.settings.n_sde_steps, "score_s": time.perf_counter() - t0,
       "metrics": m,
       "paper_as_lj13": {"geometric_w2": 1.67, "energy_w2": 2.40,
                         "budget": "4,000 epochs (this run: see epochs)"}}
json.dump(res, open(f"{out}/lj13_run.json", "w"), indent=2)
print(json.dumps(res, indent=2))
EOF

# ------------------------------------------------------------------------------ summary
"$PY" - "$STATUS_FILE" "$(( $(date +%s) - T_START ))" <<'EOF'
import json, os, sys
out = os.environ["GPU_CHECK_OUT"]
stages = {}
for line in open(sys.argv[1]):
    name, status, rc, secs = line.split()
    stages[name] = {"status": status, "exit": int(rc), "seconds": int(secs)}
ok = all(s["status"] in ("ok", "skipped") for s in stages.values())  # "deadline": not run
summary = {"ok": ok, "dry_run": os.environ["GPU_CHECK_DRY"] == "1",
           "total_seconds": int(sys.argv[2]), "stages": stages}
json.dump(summary, open(f"{out}/summary.json", "w"), indent=2)
print(json.dumps(summary, indent=2))
sys.exit(0 if ok else 1)
EOF
