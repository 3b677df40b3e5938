"""Run configuration: one YAML file describes a run, validated with pydantic.

Example (``examples/dw4.yaml``)::

    seed: 0
    energy:   {name: dw4}
    space:    {name: euclidean, n_particles: 4, spatial_dim: 2, mean_free: true}
    schedule: {name: geometric, sigma_min: 0.001, sigma_max: 2.0}
    model:    {name: egnn, hidden: 64, n_layers: 3}
    buffer:   {name: fifo, capacity: 10000}
    train:    {n_epochs: 30, samples_per_epoch: 512, grad_steps_per_epoch: 100, ...}
    eval:     {reference: ../shared/data/particles/dw4_val.npy, n_samples: 1000}

Each component section is ``name`` (a registry name, see ``adjoint-core plugins``) plus the
keyword parameters of that component; they are validated against the component's signature,
so a typo or a bad value fails before training with the dotted field name (``energy.n_particles``).
Unknown top-level keys are rejected. A file may start from another one with
``base: other.yaml`` and change only what differs (``examples/dw4_cpu_reweight_sde400.yaml``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from adjoint_core.mcmc.samplers import MCMCSettings
from adjoint_core.plugins.registry import ConfigError, Registry, default_registry
from adjoint_core.problem.target import Problem, Target
from adjoint_core.training.objectives.asbs import ASBSSettings
from adjoint_core.training.objectives.idem import IDEMSettings
from adjoint_core.training.trainer import TrainSettings

__all__ = ["ComponentSpec", "EvalSettings", "RunConfig", "load_config", "validate_config",
           "build_components", "merge_config", "read_config_file"]


class ComponentSpec(BaseModel):
    """``name`` of a registered component plus its parameters (any further keys)."""

    model_config = ConfigDict(extra="allow")

    name: str

    @property
    def params(self) -> dict[str, Any]:
        """The component's keyword parameters."""
        return dict(self.model_extra or {})


class EvalSettings(BaseModel):
    """Evaluation during and after training.

    Attributes:
        reference: ``.npy`` file of reference samples ``(N, prod(event_shape))`` (relative paths
            are resolved against the working directory, then the config file's folder).
        n_samples: Generated (and reference) samples used by the metrics.
        geometric_samples: Samples used for geometric W2 (the expensive metric); 0 disables it.
        every: Evaluate every ``every`` epochs (0: only before and after training).
        n_sde_steps: Steps for evaluation sampling (default: the training value).
        protocols: Geometric-W2 protocols to report.
    """

    model_config = ConfigDict(extra="forbid")

    reference: str | None = None
    n_samples: int = Field(2000, ge=2)
    geometric_samples: int = Field(500, ge=0)
    every: int = Field(0, ge=0)
    n_sde_steps: int | None = Field(None, ge=1)
    protocols: list[Literal["papers", "invariant"]] = ["papers", "invariant"]


class RunConfig(BaseModel):
    """A complete, validated run description."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    device: str = "cpu"
    #: One target: its energy and state space. Give these, or ``problem``.
    energy: ComponentSpec | None = None
    space: ComponentSpec | None = None
    #: Several targets built by a registered problem (e.g. ``molecules`` of a SMILES file,
    #: each with its own energy, space, model context and buffer): amortized training.
    problem: ComponentSpec | None = None
    schedule: ComponentSpec = ComponentSpec(name="geometric")
    model: ComponentSpec
    buffer: ComponentSpec = ComponentSpec(name="fifo")
    train: TrainSettings = TrainSettings()
    eval: EvalSettings = EvalSettings()
    checkpoint_every: int = Field(1, ge=1)
    #: Training algorithm (a registered objective, see ``adjoint-core plugins``): ``adjoint``
    #: (Adjoint Sampling), ``asbs`` (the Adjoint Schrödinger Bridge Sampler,
    #: :mod:`adjoint_core.training.objectives.asbs`; the corrector is a second network built
    #: from ``model:``), ``idem`` (:mod:`adjoint_core.training.objectives.idem`) or a plugin's.
    #: A name, or ``{name: ..., **params}``; the core's algorithms may instead take their
    #: parameters from the ``asbs:`` / ``idem:`` sections. Budgets stay in ``train:``.
    algorithm: str | ComponentSpec = "adjoint"
    asbs: ASBSSettings = ASBSSettings()
    idem: IDEMSettings = IDEMSettings()
    #: Settings of ``adjoint-core mcmc`` on this config's energy (unused by ``train``).
    mcmc: MCMCSettings | None = None
    #: Warm start: initialise the network (and its EMA) from another run's checkpoint, a run
    #: directory (its ``checkpoints/latest.pt``) or a ``.pt`` file, resolved like data paths.
    #: The optimizer, buffer, counters and learning-rate schedule start fresh. Its ``energy``,
    #: ``space`` and ``model`` sections must equal this config's; ``schedule``, ``buffer`` and
    #: ``train`` may differ (e.g. fine-tuning with more SDE steps). Ignored when the run
    #: directory already has a checkpoint: resuming wins. Under ``torchrun`` every process
    #: reads the file.
    init_from: str | None = None

    @property
    def algorithm_name(self) -> str:
        """The algorithm's registry name."""
        return self.algorithm if isinstance(self.algorithm, str) else self.algorithm.name

    def algorithm_params(self) -> dict[str, Any]:
        """The algorithm's parameters (``algorithm:`` mapping, else its legacy section)."""
        if isinstance(self.algorithm, ComponentSpec):
            return self.algorithm.params
        if self.algorithm in ("asbs", "idem"):
            section = getattr(self, self.algorithm)
            return section.model_dump(exclude_unset=True)
        return {}

    @model_validator(mode="after")
    def _algorithm_sections(self) -> RunConfig:
        name = self.algorithm_name
        for section in ("asbs", "idem"):
            default = type(getattr(self, section))()
            if name != section and getattr(self, section) != default:
                raise ValueError(f"an {section}: section only acts with algorithm: {section} "
                                 f"(got algorithm: {name})")
            if name == section and isinstance(self.algorithm, ComponentSpec) and \
                    getattr(self, section) != default:
                raise ValueError(f"give the {section} parameters either in algorithm: or in "
                                 f"the {section}: section, not both")
        if self.problem is None and (self.energy is None or self.space is None):
            raise ValueError("give energy: and space: (one target) or problem: (several)")
        if self.problem is not None and (self.energy is not None or self.space is not None):
            raise ValueError("problem: builds its own energies and spaces; remove energy: and "
                             "space:")
        return self


def _format_validation(exc: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        lines.append(f"  {loc}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def merge_config(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge two config mappings: ``override`` wins.

    Mappings are merged key by key, recursively; any other value (scalar, list) in
    ``override`` replaces the base's. A component section that names a *different* component
    (``model: {name: mlp}`` over ``model: {name: egnn, hidden: 64}``) replaces the base's
    section instead of merging, since the base's parameters belong to another component.

    Returns:
        A new mapping; the inputs are not modified.
    """
    out = dict(base)
    for key, value in override.items():
        old = out.get(key)
        if isinstance(value, dict) and isinstance(old, dict) and \
                ("name" not in value or value.get("name") == old.get("name")):
            out[key] = merge_config(old, value)
        else:
            out[key] = value
    return out


def read_config_file(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML config file into a mapping, resolving ``base:`` inheritance.

    A top-level ``base: other.yaml`` (relative to this file's folder) names a config this one
    starts from; this file's keys are deep-merged over it (:func:`merge_config`). Bases may
    have bases. Other relative paths in a config (``eval.reference``) keep their usual
    resolution: the working directory, then the folder of the file that was loaded.

    Raises:
        ConfigError: Missing file, invalid YAML, a non-mapping document, a ``base`` that is
            not a string, or a cycle of bases.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {p} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {p} must be a mapping of sections, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise ConfigError(f"config {p}: base must be the path of another config file, got "
                          f"{base!r}")
    base_path = (p.parent / base).resolve()
    chain = (*_chain, p.resolve())
    if base_path in chain:
        raise ConfigError("config bases form a cycle: "
                          + " -> ".join(str(c) for c in (*chain, base_path)))
    return merge_config(read_config_file(base_path, chain), data)


def validate_config(model: type[BaseModel], path: str | Path | dict) -> Any:
    """Read a YAML config (or take a dict) and validate it as ``model``.

    Shared by :func:`load_config` and the ``mcmc`` config loader. Files may inherit from
    another file with ``base:`` (:func:`read_config_file`).

    Raises:
        ConfigError: Missing file, invalid YAML, a non-mapping document, or every bad field
            with its value and the reason.
    """
    if isinstance(path, dict):
        data, source = path, "<dict>"
    else:
        data, source = read_config_file(path), str(path)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc, source)) from None


def load_config(path: str | Path | dict) -> RunConfig:
    """Read and validate a YAML config (or a dict).

    Raises:
        ConfigError: Naming every bad field with its value and the reason.
    """
    return validate_config(RunConfig, path)


def build_components(cfg: RunConfig, registry: Registry | None = None) -> dict[str, Any]:
    """Instantiate the problem's targets, the schedule and the model from a config.

    One target from ``energy:``, ``space:`` and ``buffer:``; or the targets of ``problem:``
    (each with its own buffer of the ``buffer:`` section).

    Returns:
        ``{"targets": [Target, ...], "problem": Problem, "schedule", "model"}``, plus
        ``"space"``, ``"energy"`` and ``"buffer"`` of the first target.

    Raises:
        ConfigError: Unknown names (listing the registered ones) or bad parameters.
    """
    reg = registry or default_registry()

    def make_buffer():
        return reg.build("buffer", cfg.buffer.name, cfg.buffer.params)

    if cfg.problem is not None:
        problem = reg.build("problem", cfg.problem.name, cfg.problem.params,
                            make_buffer=make_buffer)
        if not isinstance(problem, Problem) or not problem.targets:
            raise ConfigError(f"problem {cfg.problem.name!r} built no targets")
        targets = problem.targets
    else:
        space = reg.build("space", cfg.space.name, cfg.space.params)
        energy = reg.build("energy", cfg.energy.name, cfg.energy.params, space=space)
        if tuple(energy.event_shape) != tuple(space.event_shape):
            raise ConfigError(
                f"energy {cfg.energy.name!r} has event shape {energy.event_shape} but space "
                f"{cfg.space.name!r} has {space.event_shape}: check space.n_particles / "
                f"space.spatial_dim (or space.dim) against the energy"
            )
        targets = [Target(energy, space, make_buffer())]
        problem = Problem(targets)
    first = targets[0]
    schedule = reg.build("schedule", cfg.schedule.name, cfg.schedule.params)
    model = reg.build("model", cfg.model.name, cfg.model.params, space=first.space,
                      energy=first.energy, schedule=schedule)
    try:
        for target in targets:
            model.check_space(target.space)
    except ValueError as exc:
        raise ConfigError(f"model {cfg.model.name!r}: {exc}") from None
    return {"targets": targets, "problem": problem, "schedule": schedule, "model": model,
            "space": first.space, "energy": first.energy, "buffer": first.buffer}
