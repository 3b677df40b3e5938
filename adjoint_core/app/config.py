"""Run configuration: one YAML file describes a run, validated with pydantic.

Example (``examples/dw4.yaml``)::

    seed: 0
    energy:   {name: dw4}
    space:    {name: euclidean, n_particles: 4, spatial_dim: 2, mean_free: true}
    schedule: {name: geometric, sigma_min: 0.001, sigma_max: 2.0}
    model:    {name: egnn, hidden: 64, n_layers: 3}
    buffer:   {name: fifo, capacity: 10000}
    train:    {n_epochs: 30, samples_per_epoch: 512, grad_steps_per_epoch: 100, ...}
    eval:     {reference: dw4_val, n_samples: 1000}

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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from adjoint_core.mcmc.samplers import MCMCSettings
from adjoint_core.plugins.registry import ConfigError, Registry, default_registry, show_value
from adjoint_core.problem.target import Problem, Target
from adjoint_core.training.objectives.asbs import ASBSSettings
from adjoint_core.training.objectives.idem import IDEMSettings
from adjoint_core.training.trainer import TrainSettings

__all__ = ["ComponentSpec", "EvalSettings", "RunConfig", "load_config", "validate_config",
           "build_components", "merge_config", "read_config_file", "format_validation",
           "UniqueKeyLoader", "check_device_name"]


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

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    reference: str | None = None
    n_samples: int = Field(2000, ge=2)
    geometric_samples: int = Field(500, ge=0)
    every: int = Field(0, ge=0)
    n_sde_steps: int | None = Field(None, ge=1)
    protocols: list[Literal["papers", "invariant"]] = ["papers", "invariant"]


class RunConfig(BaseModel):
    """A complete, validated run description."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    #: Seed of every random stream of the run (``0 <= seed < 2**63``).
    seed: int = Field(0, ge=0, lt=2**63)
    #: ``cpu``, ``cuda``, ``cuda:N``, ``auto`` (CUDA when available) or another torch device.
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

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        return check_device_name(value)

    @model_validator(mode="after")
    def _algorithm_sections(self) -> RunConfig:
        name = self.algorithm_name
        for section in ("asbs", "idem"):
            default = type(getattr(self, section))()
            given = getattr(self, section).model_dump(exclude_unset=True)
            if name != section and getattr(self, section) != default:
                raise ValueError(f"{section}: {show_value(given)}: an {section}: section only "
                                 f"acts with algorithm: {section} (got algorithm: {name})")
            if name == section and isinstance(self.algorithm, ComponentSpec) and \
                    getattr(self, section) != default:
                raise ValueError(f"{section}: {show_value(given)}: give the {section} parameters "
                                 f"either in algorithm: or in the {section}: section, not both")
        if self.problem is None and (self.energy is None or self.space is None):
            missing = " and ".join(k for k in ("energy", "space") if getattr(self, k) is None)
            raise ValueError(f"{missing}: missing: give energy: and space: (one target) or "
                             "problem: (several)")
        if self.problem is not None and (self.energy is not None or self.space is not None):
            raise ValueError(f"problem: {self.problem.name!r}: builds its own energies and "
                             "spaces; remove energy: and space:")
        return self


def check_device_name(value: str) -> str:
    """Check the syntax of a ``device`` value (whether it exists is checked when it is used).

    Raises:
        ValueError: Not ``auto`` and not a torch device string.
    """
    import torch

    if value != "auto":
        try:
            torch.device(value)
        except (RuntimeError, ValueError, TypeError):
            raise ValueError("not a device; use cpu, cuda, cuda:N, mps or auto") from None
    return value


#: Prefixes pydantic puts before the message of a validator's exception.
_PYDANTIC_PREFIXES = ("Value error, ", "Assertion failed, ")


def format_validation(exc: ValidationError, source: str | None = None) -> str:
    """One line ``field: value: what is allowed`` per error of a validation, joined by semicolons.

    Messages of the configs' own validators already start with ``field: value:`` and are kept
    as they are; a missing field reads ``field: missing: a value is required``.

    Args:
        exc: The pydantic error.
        source: The config file, appended as ``(in FILE)``.
    """
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"]
        for prefix in _PYDANTIC_PREFIXES:
            msg = msg.removeprefix(prefix)
        if err["type"] == "missing":
            parts.append(f"{loc}: missing: a value is required")
        elif err["type"] == "extra_forbidden":
            parts.append(f"{loc}: {show_value(err.get('input'))}: not a field here ({msg})")
        elif err["type"] in ("value_error", "assertion_error") and \
                isinstance(err.get("input"), dict):
            parts.append(msg)  # a section-level check: its message names the field
        else:
            parts.append(f"{loc or 'config'}: {show_value(err.get('input'))}: {msg}")
    text = "; ".join(parts)
    return f"{text} (in {source})" if source else text


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


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML safe loader that rejects a key given twice in one mapping.

    PyYAML keeps the last of two equal keys silently; a config that sets ``lr`` twice is a
    mistake, so this loader raises :class:`ConfigError` naming the key (dotted, e.g.
    ``train.lr``) and the lines of both. Set :attr:`source` to name the file in the message.
    """

    #: The file being read (for messages).
    source: str = "<string>"

    def construct_document(self, node: yaml.Node) -> Any:
        """Record every mapping's dotted path, then construct the document."""
        self._paths: dict[int, str] = {}
        stack = [(node, "")]
        while stack:
            n, path = stack.pop()
            if id(n) in self._paths:  # an alias of a node already seen
                continue
            if isinstance(n, yaml.MappingNode):
                self._paths[id(n)] = path
                for k, v in n.value:
                    name = k.value if isinstance(k, yaml.ScalarNode) else "?"
                    stack.append((v, f"{path}.{name}" if path else name))
            elif isinstance(n, yaml.SequenceNode):
                self._paths[id(n)] = path
                stack.extend((v, f"{path}[{i}]") for i, v in enumerate(n.value))
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        """Construct a mapping after checking that no key appears twice.

        Raises:
            ConfigError: ``<dotted key>: given twice (lines A and B of FILE): ...``.
        """
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: PyYAML reports it below
                    continue
                line = key_node.start_mark.line + 1
                if first is not None:
                    parent = getattr(self, "_paths", {}).get(id(node), "")
                    dotted = f"{parent}.{key}" if parent else str(key)
                    raise ConfigError(f"{dotted}: given twice (lines {first} and {line} of "
                                      f"{self.source}): give each key once")
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_config_file(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML config file into a mapping, resolving ``base:`` inheritance.

    A top-level ``base: other.yaml`` (relative to this file's folder) names a config this one
    starts from; this file's keys are deep-merged over it (:func:`merge_config`). Bases may
    have bases. Other relative paths in a config (``eval.reference``) keep their usual
    resolution: the working directory, then the folder of the file that was loaded.

    Raises:
        ConfigError: Missing or unreadable file, invalid YAML, a key given twice in one
            mapping, a non-mapping document, a ``base`` that is not a string, or a cycle of
            bases.
    """
    p = Path(path)
    field = "base" if _chain else "config"
    if not p.is_file():
        what = "a directory, not a file" if p.is_dir() else "config file not found"
        raise ConfigError(f"{field}: {p}: {what}; give the path of a YAML config file")
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{field}: {p}: cannot be read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{field}: {p}: not a text file; give a YAML config file") from None
    loader = UniqueKeyLoader(text)
    loader.source = str(p)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise ConfigError(f"{field}: {p}: not valid YAML ({detail})") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise ConfigError(f"{field}: {p}: must be a mapping of sections (key: value lines), got "
                          f"{'an empty file' if data is None else type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise ConfigError(f"base: {show_value(base)}: must be the path of another config file "
                          f"(in {p})")
    base_path = (p.parent / base).resolve()
    chain = (*_chain, p.resolve())
    if base_path in chain:
        raise ConfigError(f"base: {base}: config bases form a cycle: "
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
        raise ConfigError(format_validation(exc, source if source != "<dict>" else None)) \
            from None


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
            raise ConfigError(f"problem: {cfg.problem.name!r}: built no targets; give it at "
                              "least one usable target")
        targets = problem.targets
    else:
        space = reg.build("space", cfg.space.name, cfg.space.params)
        energy = reg.build("energy", cfg.energy.name, cfg.energy.params, space=space)
        if tuple(energy.event_shape) != tuple(space.event_shape):
            raise ConfigError(
                f"space: {cfg.space.name!r}: energy {cfg.energy.name!r} has event shape "
                f"{energy.event_shape} but space "
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
        raise ConfigError(f"model: {cfg.model.name!r}: {exc}") from None
    return {"targets": targets, "problem": problem, "schedule": schedule, "model": model,
            "space": first.space, "energy": first.energy, "buffer": first.buffer}
