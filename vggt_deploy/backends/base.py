"""The Runner interface every backend implements (after Polygraphy's BaseRunner).

A runner is created cheaply, `activate()`d once (loads the model, allocates),
then `infer(feeds)` any number of times, then `close()`d; it is also a context
manager. The base class owns the state checks and the input validation so a
backend implements only `_activate`, `_infer` and `_close`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from vggt_deploy.errors import UserError


class Runner(ABC):
    """Base class: state checks and input checks; backends fill in the `_impl` methods.

    Args:
        name: a label for tables and errors, e.g. ``ort-int8``.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.active = False
        # name -> (dtype, shape with None for dynamic dims); set by _activate.
        self.input_spec: dict[str, tuple[np.dtype, tuple[int | None, ...]]] = {}

    def activate(self) -> Runner:
        if self.active:
            raise RuntimeError(f"{self.name}: already active")
        self._activate()
        self.active = True
        return self

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; returns outputs by name. Inputs are checked against the model's spec first."""
        if not self.active:
            raise RuntimeError(f"{self.name}: call activate() before infer()")
        self._check(feeds)
        return self._infer(feeds)

    def close(self) -> None:
        if self.active:
            self._close()
            self.active = False

    def __enter__(self) -> Runner:
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.close()

    def _check(self, feeds: dict[str, np.ndarray]) -> None:
        missing = sorted(set(self.input_spec) - set(feeds))
        extra = sorted(set(feeds) - set(self.input_spec))
        if missing or extra:
            raise UserError(f"{self.name}: inputs {sorted(feeds)} do not match the model's {sorted(self.input_spec)}")
        for key, (dtype, shape) in self.input_spec.items():
            value = feeds[key]
            if value.dtype != dtype:
                raise UserError(f"{self.name}: input {key!r} is {value.dtype}, the model takes {dtype}")
            if len(value.shape) != len(shape) or any(s is not None and s != v for s, v in zip(shape, value.shape)):
                raise UserError(f"{self.name}: input {key!r} has shape {value.shape}, the model takes {shape}")

    @abstractmethod
    def _activate(self) -> None: ...

    @abstractmethod
    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def _close(self) -> None:
        """Release resources (default: nothing)."""
