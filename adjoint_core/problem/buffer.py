"""Replay buffers of terminal samples and their adjoints.

Each simulated terminal sample ``x_1`` costs one energy evaluation; the buffer keeps
``(x_1, a(x_1))`` with ``a = ∇Φ(x_1)`` (the terminal adjoint) so that many cheap regression
steps reuse it. Optional extras (e.g. energies, molecule indices) travel with each row.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

__all__ = ["Buffer", "ReplayBuffer"]


class Buffer(ABC):
    """Abstract replay buffer of rows ``{"x1": (n, *event), "adjoint": (n, *event), ...}``."""

    @abstractmethod
    def add(self, x1: torch.Tensor, adjoint: torch.Tensor, **extras: torch.Tensor) -> None:
        """Append ``n`` rows.

        Args:
            x1: Terminal samples, shape ``(n, *event_shape)``.
            adjoint: Terminal adjoints ``∇Φ(x1)``, shape ``(n, *event_shape)``.
            **extras: Further per-row tensors with leading dimension ``n``.
        """

    @abstractmethod
    def sample(self, batch_size: int, generator: torch.Generator | None = None,
               probs: torch.Tensor | None = None) -> dict:
        """Draw ``batch_size`` rows with replacement.

        Args:
            batch_size: Number of rows.
            generator: Random generator.
            probs: Optional non-negative weights of the stored rows, shape ``(len(self),)`` in
                the order of :meth:`tensors`; rows are drawn proportionally to them. ``None``:
                uniformly.

        Returns:
            A dict of tensors of leading size ``batch_size``.
        """

    @abstractmethod
    def tensors(self) -> dict[str, torch.Tensor]:
        """The stored rows by field, each of leading size ``len(self)``."""

    @abstractmethod
    def __len__(self) -> int:
        """Number of stored rows."""

    @abstractmethod
    def state_dict(self) -> dict:
        """Everything needed to restore the buffer exactly (tensors and plain values)."""

    @abstractmethod
    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict`."""


class ReplayBuffer(Buffer):
    """FIFO replay buffer with a fixed capacity, stored as preallocated tensors.

    When full, the oldest rows are overwritten first. Sampling is uniform with replacement
    over the stored rows.

    Args:
        capacity: Maximum number of rows (``> 0``).
        device: Where rows are stored (default CPU).
    """

    def __init__(self, capacity: int = 10_000, device: str | torch.device = "cpu") -> None:
        if capacity < 1:
            raise ValueError(f"buffer capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.device = torch.device(device)
        self._data: dict[str, torch.Tensor] = {}
        self._next = 0  # index of the next row to write
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, x1, adjoint, **extras) -> None:  # noqa: D102
        rows = {"x1": x1, "adjoint": adjoint, **extras}
        n = x1.shape[0]
        for k, v in rows.items():
            if v.shape[0] != n:
                raise ValueError(f"buffer field {k!r} has {v.shape[0]} rows, x1 has {n}")
        if not self._data:
            self._data = {
                k: torch.empty((self.capacity, *v.shape[1:]), dtype=v.dtype, device=self.device)
                for k, v in rows.items()
            }
        elif set(rows) != set(self._data):
            raise ValueError(
                f"buffer fields {sorted(rows)} differ from stored {sorted(self._data)}")
        if n >= self.capacity:  # keep only the newest rows
            rows = {k: v[-self.capacity:] for k, v in rows.items()}
            n = self.capacity
        idx = (self._next + torch.arange(n)) % self.capacity
        for k, v in rows.items():
            self._data[k][idx.to(self.device)] = v.detach().to(self.device, self._data[k].dtype)
        self._next = int((self._next + n) % self.capacity)
        self._size = min(self._size + n, self.capacity)

    def sample(self, batch_size, generator=None, probs=None) -> dict:  # noqa: D102
        if self._size == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        device = generator.device if generator is not None else self.device
        if probs is None:
            idx = torch.randint(self._size, (batch_size,), generator=generator, device=device)
        else:
            if tuple(probs.shape) != (self._size,):
                raise ValueError(f"probs must have shape ({self._size},), got "
                                 f"{tuple(probs.shape)}")
            idx = torch.multinomial(probs.to(device, torch.float64), batch_size,
                                    replacement=True, generator=generator)
        return {k: v[idx.to(self.device)] for k, v in self._data.items()}

    def tensors(self) -> dict[str, torch.Tensor]:
        """The stored rows (oldest first is not guaranteed), each of leading size ``len``."""
        return {k: v[: self._size] for k, v in self._data.items()}

    def state_dict(self) -> dict:  # noqa: D102
        return {
            "capacity": self.capacity,
            "next": self._next,
            "size": self._size,
            "data": {k: v[: self._size].clone().cpu() for k, v in self._data.items()},
        }

    def load_state_dict(self, state: dict) -> None:  # noqa: D102
        if int(state["capacity"]) != self.capacity:
            raise ValueError(
                f"checkpoint buffer capacity {state['capacity']} != configured {self.capacity}"
            )
        self._data = {}
        self._size = int(state["size"])
        self._next = int(state["next"])
        for k, v in state["data"].items():
            full = torch.empty((self.capacity, *v.shape[1:]), dtype=v.dtype, device=self.device)
            full[: self._size] = v.to(self.device)
            self._data[k] = full

    def __repr__(self) -> str:
        return f"ReplayBuffer(capacity={self.capacity}, size={self._size})"
