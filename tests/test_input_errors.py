"""Every input mistake ends with one line ``error: <field or argument>: <value>: <allowed>``.

Each command (``train``, ``sample``, ``evaluate``, ``mcmc``, ``plugins``, ``info``) is given bad
config fields, bad arguments and bad files, in-process through :func:`adjoint_core.app.cli.main`;
each must end with a non-zero status and exactly one ``error:`` line on stderr naming the field
or argument, never a traceback. Property-based tests (hypothesis) then throw generated values at
config fields and command arguments and accept only a success or such a clean error. The
chemistry commands are covered in the chemistry plugin's tests.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from adjoint_core.testing import CLEAN_ERROR, run_cli

TINY = {
    "seed": 0,
    "energy": {"name": "dw4"},
    "space": {"name": "euclidean", "n_particles": 4, "spatial_dim": 2, "mean_free": True},
    "schedule": {"name": "geometric", "sigma_min": 0.001, "sigma_max": 2.0},
    "model": {"name": "egnn", "hidden": 8, "n_layers": 1},
    "buffer": {"name": "fifo", "capacity": 64},
    "train": {"n_epochs": 1, "samples_per_epoch": 8, "grad_steps_per_epoch": 2,
              "train_batch_size": 8, "n_sde_steps": 4},
    "eval": {"n_samples": 8, "geometric_samples": 2},
}

CLEAN = CLEAN_ERROR



def error_line(status: int, err: str, expected_status: int = 2) -> str:
    """The single ``error:`` line of a failed command (checks the status and the format)."""
    assert status == expected_status, (status, err)
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert lines[-1] == errors[0], err
    assert CLEAN.fullmatch(errors[0]), errors[0]
    return errors[0]


def write_config(folder: Path, name: str, config: dict | str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    return path


def changed(**changes) -> dict:
    """``TINY`` with ``section__key=value`` changes (``None`` deletes the key)."""
    cfg = json.loads(json.dumps(TINY))
    for dotted, value in changes.items():
        node = cfg
        *head, last = dotted.split("__")
        for k in head:
            node = node.setdefault(k, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return cfg


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A trained tiny run directory and sample files of every kind of mistake."""
    d = tmp_path_factory.mktemp("inputs")
    status, _, err = run_cli(["train", str(write_config(d, "tiny", TINY)), "--out",
                              str(d / "run"), "--no-progress"])
    assert status == 0, err
    rng = np.random.default_rng(0)
    arrays = {
        "good": rng.normal(size=(16, 8)).astype(np.float32),
        "empty": np.zeros((0, 8), np.float32),
        "all_nan": np.full((16, 8), np.nan, np.float32),
        "ref_nan": np.where(np.arange(8) == 3, np.nan, rng.normal(size=(16, 8))),
        "narrow": rng.normal(size=(16, 3)),
        "flat": np.zeros(8),
        "strings": np.array(["a", "b"]),
    }
    out = {"dir": d, "run": d / "run"}
    for name, arr in arrays.items():
        np.save(d / f"{name}.npy", arr)
        out[name] = d / f"{name}.npy"
    np.save(d / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    out["objects"] = d / "objects.npy"
    (d / "text.npy").write_text("not an array\n")
    out["text"] = d / "text.npy"
    (d / "a_file").write_text("x")
    out["a_file"] = d / "a_file"
    return out


# ---------------------------------------------------------------------------- train: config
@pytest.mark.parametrize("changes, fragment", [
    ({"device": "cuda:99"}, "device: 'cuda:99'"),         # no CUDA, or not 100 devices
    ({"device": "tpu"}, "device: 'tpu': not a device"),
    ({"device": ""}, "device: '': not a device"),
    ({"schedule__sigma_max": 1e300}, "schedule.sigma_max: 1e+300"),
    ({"schedule__sigma_min": -1.0}, "schedule.sigma_min: -1.0"),
    ({"schedule__sigma_min": float("nan")}, "schedule.sigma_min: nan"),
    ({"seed": 2**70}, f"seed: {2**70}"),
    ({"seed": -1}, "seed: -1"),
    ({"train__lr": float("inf")}, "train.lr: inf: Input should be a finite number"),
    ({"train__lr": -0.1}, "train.lr: -0.1"),
    ({"train__n_epochs": -1}, "train.n_epochs: -1"),
    ({"train__n_sde_steps": "many"}, "train.n_sde_steps: 'many'"),
    ({"train__nonfinite": "ignore"}, "train.nonfinite: 'ignore'"),
    ({"train__reweight_power": 0.5}, "train.reweight_power: 0.5: only acts with reweight"),
    ({"train__learning_rate": 0.1}, "train.learning_rate: 0.1: not a field here"),
    ({"checkpoint_every": 0}, "checkpoint_every: 0"),
    ({"model__hidden": 0}, "model.hidden, model.n_layers: 0, 1"),
    ({"model__name": "transformer"}, "model.name: 'transformer': unknown model"),
    ({"energy__temperature": 0}, "energy.temperature: 0"),
    ({"energy__bogus": 1}, "energy.bogus: 1: unknown parameter"),
    ({"space__n_particles": 5}, "space: 'euclidean': energy 'dw4' has event shape (4, 2)"),
    ({"algorithm": "nope"}, "objective.name: 'nope': unknown objective"),
    ({"idem": {"n_mc_samples": 3}}, "idem: {'n_mc_samples': 3}: an idem: section only acts"),
    ({"model": None}, "model: missing: a value is required"),
    ({"energy": None}, "energy: missing"),
    ({"init_from": "/nonexistent/run"}, "init_from: '/nonexistent/run': no checkpoint"),
    ({"eval__reference": "dw5_val"}, "eval.reference: 'dw5_val' is neither a registered"),
    ({"eval__n_samples": 1}, "eval.n_samples: 1"),
])
def test_train_bad_config_field(tmp_path, changes, fragment):
    cfg = write_config(tmp_path, "c", changed(**changes))
    line = error_line(*run_cli(["train", str(cfg), "--out", str(tmp_path / "run"),
                                "--no-progress"])[::2])
    assert fragment in line
    assert not (tmp_path / "run" / "checkpoints" / "latest.pt").exists()


@pytest.mark.parametrize("text, fragment", [
    ("seed: 0\nseed: 1\n", "seed: given twice (lines 1 and 2 of"),
    ("train:\n  lr: 0.1\n  n_epochs: 2\n  lr: 0.2\n", "train.lr: given twice (lines 2 and 4 of"),
    ("", "must be a mapping of sections (key: value lines), got an empty file"),
    ("- a\n- b\n", "must be a mapping of sections"),
    ("energy: [unclosed\n", "not valid YAML"),
    ("base: 3\n", "base: 3: must be the path of another config file"),
    ("base: missing.yaml\n", "missing.yaml: config file not found"),
])
def test_train_bad_yaml(tmp_path, text, fragment):
    cfg = write_config(tmp_path, "c", text)
    line = error_line(*run_cli(["train", str(cfg), "--out", str(tmp_path / "run")])[::2])
    assert fragment in line


def test_duplicate_key_names_key_and_lines(tmp_path):
    from adjoint_core import ConfigError
    from adjoint_core.app.config import load_config

    body = yaml.safe_dump(TINY, sort_keys=False)
    cfg = write_config(tmp_path, "dup", body + "model: {name: mlp}\n")
    model_line = body.splitlines().index("model:") + 1
    last = len(body.splitlines()) + 1
    with pytest.raises(ConfigError, match=rf"^model: given twice \(lines {model_line} and "
                                          rf"{last} of .*dup.yaml\)"):
        load_config(cfg)
    # the same key in two different mappings is fine
    ok = write_config(tmp_path, "ok", yaml.safe_dump(changed(model__name="egnn")))
    assert load_config(ok).model.name == "egnn"


@pytest.mark.parametrize("make_args, fragment", [
    (lambda f: ["/nonexistent.yaml", "--out", str(f["dir"] / "r1")], "config: /nonexistent"),
    (lambda f: [str(f["dir"]), "--out", str(f["dir"] / "r2")], "a directory, not a file"),
    (lambda f: [str(f["good"]), "--out", str(f["dir"] / "r3")], "not a text file"),
    (lambda f: [str(f["dir"] / "tiny.yaml"), "--out", str(f["a_file"])],
     "--out: %(a_file)s: exists and is not a directory"),
    (lambda f: [str(f["dir"] / "tiny.yaml"), "--out", str(f["a_file"] / "run")],
     "is a file, not a directory"),
    (lambda f: [str(f["dir"] / "tiny.yaml")], "--out: missing: required"),
    (lambda f: [str(f["dir"] / "tiny.yaml"), "--out", str(f["dir"] / "r4"), "--bogus"],
     "--bogus: unrecognized"),
])
def test_train_bad_arguments_and_files(files, make_args, fragment):
    line = error_line(*run_cli(["train", *make_args(files)])[::2])
    assert fragment % {k: str(v) for k, v in files.items()} in line


@pytest.mark.parametrize("reference, fragment", [
    ("ref_nan", "16 of 16 samples hold NaN or inf"),
    ("empty", "holds 0 samples; at least 2 finite samples are needed"),
    ("narrow", "has shape (16, 3), expected (N, 8)"),
    ("text", "not a .npy array file"),
    ("objects", "not a .npy array file"),
])
def test_train_bad_reference_file(files, tmp_path, reference, fragment):
    cfg = write_config(tmp_path, "c", changed(eval__reference=str(files[reference])))
    line = error_line(*run_cli(["train", str(cfg), "--out", str(tmp_path / "run")])[::2])
    assert line.startswith(f"error: eval.reference: {files[reference]}")
    assert fragment in line


# ---------------------------------------------------------------------------- sample
@pytest.mark.parametrize("args, fragment", [
    (["--num-samples", "0"], "--num-samples: '0': an integer >= 1"),
    (["--num-samples", "-5"], "--num-samples: '-5': an integer >= 1"),
    (["--num-samples", "many"], "--num-samples: 'many': an integer >= 1"),
    (["--num-samples", "4", "--n-steps", "0"], "--n-steps: '0': an integer >= 1"),
    (["--num-samples", "4", "--batch-size", "-1"], "--batch-size: '-1'"),
    (["--num-samples", "4", "--seed", "-1"], "--seed: '-1': an integer from 0 to"),
    (["--num-samples", "4", "--seed", str(2**64)], f"--seed: '{2**64}'"),
    (["--num-samples", "4", "--resample", "-2"], "--resample: '-2': an integer >= 0"),
    (["--num-samples", "4", "--device", "cuda:99"], "--device: 'cuda:99'"),
    (["--num-samples", "4", "--device", "banana"], "--device: 'banana': not a device"),
    (["--num-samples", "4", "--out", "/proc/no/such/dir/s.npy"], "--out: /proc/no/such"),
    (["--num-samples", "4", "--out", "%(dir)s"], "is a directory; give a file name"),
    (["--num-samples", "4", "--out", "%(a_file)s/s.npy"], "is a file, not a directory"),
    (["--num-samples", "4", "--out"], "--out: missing value"),
])
def test_sample_bad_arguments(files, args, fragment):
    fill = {k: str(v) for k, v in files.items()}
    argv = ["sample", str(files["run"]), "--out", str(files["dir"] / "s.npy"), "--no-progress"]
    argv += [a % fill for a in args]
    line = error_line(*run_cli(argv)[::2])
    assert fragment in line
    assert not (files["dir"] / "s.npy").exists()


@pytest.mark.parametrize("run_dir, fragment", [
    ("/nonexistent/run", "run_dir: /nonexistent/run: not a run directory"),
    ("%(dir)s", "not a run directory (no config.yaml)"),
])
def test_sample_bad_run_directory(files, run_dir, fragment):
    argv = ["sample", run_dir % {k: str(v) for k, v in files.items()}, "--num-samples", "4",
            "--out", str(files["dir"] / "s.npy"), "--no-progress"]
    assert fragment in error_line(*run_cli(argv)[::2])


def test_sample_run_without_checkpoint(files, tmp_path):
    (tmp_path / "config.yaml").write_text((files["run"] / "config.yaml").read_text())
    line = error_line(*run_cli(["sample", str(tmp_path), "--num-samples", "4", "--out",
                                str(tmp_path / "s.npy"), "--no-progress"])[::2])
    assert "checkpoint: " in line and "checkpoint not found" in line


def test_sample_writes_the_path_it_names(files, tmp_path):
    status, out, err = run_cli(["sample", str(files["run"]), "--num-samples", "3", "--out",
                                str(tmp_path / "samples"), "--no-progress"])
    assert status == 0, err
    assert f"to {tmp_path / 'samples.npy'}" in out
    assert np.load(tmp_path / "samples.npy").shape == (3, 8)
    umask = os.umask(0)
    os.umask(umask)  # written atomically, with the permissions of an ordinary new file
    assert (tmp_path / "samples.npy").stat().st_mode & 0o777 == 0o666 & ~umask


# ---------------------------------------------------------------------------- evaluate
@pytest.mark.parametrize("samples, args, fragment", [
    ("text", [], "samples: %(text)s: not a .npy array file"),
    ("objects", [], "samples: %(objects)s: not a .npy array file"),
    ("empty", [], "samples: %(empty)s: holds 0 samples"),
    ("all_nan", [], "samples: %(all_nan)s: holds 16 samples, 0 of them finite"),
    ("strings", [], "holds values of type <U1"),
    ("narrow", [], "has shape (16, 3), expected (N, 8)"),
    ("flat", [], "has shape (8,), expected (N, 8)"),
    ("missing", [], "samples: '%(missing)s' is neither a registered reference set"),
    ("good", ["--reference", "%(ref_nan)s"], "--reference: %(ref_nan)s: 16 of 16 samples hold"),
    ("good", ["--reference", "%(empty)s"], "--reference: %(empty)s: holds 0 samples"),
    ("good", ["--energy", "dw5"], "--energy: 'dw5': unknown energy"),
    ("good", ["--energy", "lj13"], "expected (N, 39)"),
    ("good", ["--param", "x"], "--param: 'x': KEY=VALUE"),
    ("good", ["--param", "=1"], "--param: '=1': KEY=VALUE"),
    ("good", ["--param", "temperature=-1"], "--param temperature: -1.0"),
    ("good", ["--param", "zz=1"], "--param zz: 1: unknown parameter"),
    ("good", ["--num-samples", "0"], "--num-samples: '0': an integer >= 2"),
    ("good", ["--num-samples", "-3"], "--num-samples: '-3'"),
    ("good", ["--geometric-samples", "-1"], "--geometric-samples: '-1': an integer >= 0"),
    ("good", ["--protocol", "magic"], "--protocol: 'magic': one of"),
    ("good", ["--seed", "x"], "--seed: 'x'"),
    ("good", ["--out", "%(dir)s"], "--out: %(dir)s: is a directory"),
    ("good", ["--out", "/proc/no/such/dir/r.json"], "--out: /proc/no/such/dir/r.json"),
])
def test_evaluate_bad_inputs(files, samples, args, fragment):
    fill = {k: str(v) for k, v in files.items()} | {"missing": str(files["dir"] / "no.npy")}
    argv = ["evaluate", fill[samples], "--reference", str(files["good"]), "--energy", "dw4",
            "--num-samples", "8", "--geometric-samples", "2"] + [a % fill for a in args]
    assert fragment % fill in error_line(*run_cli(argv)[::2])


def test_evaluate_drops_and_counts_nonfinite_samples(files, tmp_path):
    x = np.load(files["good"])
    x[:3] = np.nan
    np.save(tmp_path / "some_nan.npy", x)
    status, out, err = run_cli(["evaluate", str(tmp_path / "some_nan.npy"), "--reference",
                                str(files["good"]), "--energy", "dw4", "--num-samples", "8",
                                "--geometric-samples", "2", "--out", str(tmp_path / "r.json")])
    assert status == 0, err
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["nonfinite_samples_dropped"] == 3 and math.isfinite(res["energy_w2"])


# ---------------------------------------------------------------------------- mcmc
MCMC = {"n_chains": 4, "n_steps": 4, "burn_in": 2}


@pytest.mark.parametrize("changes, args, fragment", [
    ({"mcmc": {**MCMC, "method": "gibbs"}}, [], "mcmc.method: 'gibbs'"),
    ({"mcmc": {**MCMC, "n_chains": 0}}, [], "mcmc.n_chains: 0"),
    ({"mcmc": {**MCMC, "step_size": float("nan")}}, [], "mcmc.step_size: nan"),
    ({"mcmc": {**MCMC, "thin": 10}}, [], "mcmc.n_steps: 4: keeps no sample with thin: 10"),
    ({"mcmc": {**MCMC, "temperatures": [1.0, -1.0]}}, [], "mcmc.temperatures: [1.0, -1.0]"),
    ({"mcmc": {**MCMC, "target_accept": 2}}, [], "mcmc.target_accept: 2"),
    ({"mcmc": MCMC, "device": "cuda:99"}, [], "device: 'cuda:99'"),
    ({"mcmc": MCMC, "seed": 2**64}, [], f"seed: {2**64}"),
    ({"mcmc": MCMC, "eval": {"reference": "%(ref_nan)s"}}, [], "eval.reference: %(ref_nan)s"),
    ({"mcmc": MCMC}, ["--out", "%(dir)s"], "--out: %(dir)s: is a directory"),
    ({"mcmc": MCMC}, ["--out", "/proc/no/such/dir/m.npy"], "--out: /proc/no/such/dir/m.npy"),
    ({"mcmc": MCMC, "mcmcc": {}}, [], "mcmcc: {}: not a field here"),
])
def test_mcmc_bad_inputs(files, tmp_path, changes, args, fragment):
    fill = {k: str(v) for k, v in files.items()}
    cfg = yaml.safe_load(yaml.safe_dump({**TINY, **changes}) % fill)
    path = write_config(tmp_path, "m", cfg)
    argv = ["mcmc", str(path), "--out", str(tmp_path / "m.npy"), "--no-progress"]
    argv += [a % fill for a in args]
    assert fragment % fill in error_line(*run_cli(argv)[::2])
    assert not (tmp_path / "m.npy").exists()


# ---------------------------------------------------------------------------- plugins, info, usage
@pytest.mark.parametrize("argv, fragment", [
    (["plugins", "--bogus"], "--bogus: unrecognized"),
    (["plugins", "extra"], "extra: unrecognized"),
    (["plugins", "--json", "--json=1"], "--json: ignored explicit argument"),
    (["info", "--bogus"], "--bogus: unrecognized"),
    (["info", "x", "y"], "x y: unrecognized"),
    (["bogus-command"], "command: 'bogus-command': one of"),
    ([], "command: missing: required"),
])
def test_usage_errors_are_one_line(argv, fragment):
    assert fragment in error_line(*run_cli(argv)[::2])


# ---------------------------------------------------------------------------- property-based
#: Values of every type, including the awkward ones.
ANY_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6),
    st.lists(st.integers(-3, 3), max_size=2), st.dictionaries(st.text(max_size=3),
                                                              st.integers(), max_size=1))
#: Sizes and budgets: anything but a large valid one (which would only be slow, not wrong).
SMALL_OR_INVALID = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 3), st.floats(max_value=3),
    st.sampled_from([math.nan, math.inf, -math.inf]), st.text(max_size=4),
    st.lists(st.integers(0, 2), max_size=1))

#: Config fields whose any value is cheap, and those that only get small or invalid values.
ANY_FIELDS = ["seed", "device", "algorithm", "init_from", "train__lr", "train__lr_schedule",
              "train__lr_min", "train__max_grad_norm", "train__grad_clip", "train__ema_decay",
              "train__reweight", "train__nonfinite", "train__time_limit_s",
              "train__variance_time_fraction", "schedule__sigma_min", "schedule__sigma_max",
              "schedule__name", "energy__name", "energy__temperature", "energy__a",
              "space__mean_free", "model__name", "buffer__name", "eval__reference",
              "eval__protocols", "checkpoint_every", "unknown_key"]
SIZE_FIELDS = ["train__n_epochs", "train__samples_per_epoch", "train__grad_steps_per_epoch",
               "train__train_batch_size", "train__n_sde_steps", "train__sim_batch_size",
               "train__init_samples", "train__warmup_epochs", "eval__n_samples",
               "eval__geometric_samples", "eval__every", "buffer__capacity", "model__hidden",
               "model__n_layers", "space__n_particles", "space__spatial_dim"]


def _accept(status: int, err: str) -> None:
    """A success, or a clean one-line error (never a traceback)."""
    event(f"exit status {status}")
    if status == 0:
        return
    error_line(status, err, expected_status=status)
    assert status in (1, 2, 3), status


@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(ANY_FIELDS), value=ANY_VALUE)
def test_property_config_fields_any_value(field, value):
    _train_with(field, value)


@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(SIZE_FIELDS), value=SMALL_OR_INVALID)
def test_property_config_sizes(field, value):
    _train_with(field, value)


def _train_with(field: str, value) -> None:
    """``train`` of ``TINY`` with ``field`` set to ``value`` (``None``: an explicit null)."""
    cfg = changed()
    *head, last = field.split("__")
    node = cfg
    for k in head:
        node = node.setdefault(k, {})
    node[last] = value
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.yaml"
        path.write_text(yaml.safe_dump(cfg))
        status, _, err = run_cli(["train", str(path), "--out", str(Path(d) / "run"),
                                  "--no-progress"])
        _accept(status, err)


#: Arguments of ``sample`` and ``evaluate`` with how each value is generated.
TEXT_OR_NUMBER = st.one_of(st.text(max_size=6), st.integers(-(2**70), 2**70).map(str),
                           st.floats(allow_nan=True).map(str))
SMALL_TEXT_OR_NUMBER = st.one_of(st.text(max_size=6), st.integers(-(2**70), 16).map(str),
                                 st.floats(-3, 16).map(str))
ARGUMENTS = st.one_of(
    st.tuples(st.sampled_from(["sample:--seed", "sample:--device", "sample:--out",
                               "evaluate:--seed", "evaluate:--param", "evaluate:--protocol",
                               "evaluate:--energy", "evaluate:--reference", "evaluate:samples",
                               "evaluate:--out"]), TEXT_OR_NUMBER),
    st.tuples(st.sampled_from(["sample:--num-samples", "sample:--n-steps",
                               "sample:--batch-size", "sample:--resample",
                               "evaluate:--num-samples", "evaluate:--geometric-samples"]),
              SMALL_TEXT_OR_NUMBER))


@settings(max_examples=100, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(arg=ARGUMENTS)
def test_property_command_arguments(files, arg):
    (name, value) = arg
    command, option = name.split(":")
    with tempfile.TemporaryDirectory() as d:
        if command == "sample":
            args = {"run_dir": str(files["run"]), "--num-samples": "3",
                    "--out": str(Path(d) / "s.npy")}
        else:
            args = {"samples": str(files["good"]), "--reference": str(files["good"]),
                    "--energy": "dw4", "--num-samples": "8", "--geometric-samples": "2"}
        # a path of generated text stays inside the temporary folder: no "/" in it, and it is
        # relative to that folder when it reaches argparse as it is (an option-like "-12")
        args[option] = value if not option.endswith(("out", "samples", "reference")) or \
            value.startswith("-") else str(Path(d) / (value.replace("/", "_") or "x"))
        positional = args.pop("run_dir" if command == "sample" else "samples")
        argv = [command, positional] + [t for k, v in args.items() for t in (k, v)]
        with contextlib.chdir(d):
            status, _, err = run_cli(argv + (["--no-progress"] if command == "sample" else []))
        _accept(status, err)
