"""What a step function sees: :class:`StepContext` (its params, its inputs by role, the store, a
scratch directory to fill, the device and a progress callback)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from advrec.pipeline.dag import Step
from advrec_common.store import ArtifactStore

ProgressFn = Callable[[dict[str, Any]], None]


@dataclass
class StepContext:
    """``keys`` maps each input step's name to its artifact key; roles come from ``step.inputs``."""

    step: Step
    store: ArtifactStore
    out: Path
    keys: dict[str, str]
    device: str = "cpu"
    progress: ProgressFn | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def params(self) -> dict[str, Any]:
        return self.step.params

    def has_input(self, role: str) -> bool:
        return role in self.step.inputs

    def input(self, role: str) -> str:
        """Artifact key of the single input playing ``role``."""
        name = self.step.inputs.get(role)
        if not isinstance(name, str):
            raise KeyError(f"step {self.step.name}: no single input {role!r} (inputs: {sorted(self.step.inputs)})")
        return self.keys[name]

    def inputs(self, role: str) -> list[str]:
        """Artifact keys of the inputs playing ``role`` (a list role), in plan order."""
        names = self.step.inputs.get(role)
        if not isinstance(names, list):
            raise KeyError(f"step {self.step.name}: no list input {role!r} (inputs: {sorted(self.step.inputs)})")
        return [self.keys[n] for n in names]

    def named_inputs(self) -> dict[str, str]:
        """Step name -> artifact key of every input (the report looks steps up by name)."""
        return dict(self.keys)

    def report_progress(self, done: int, total: int, unit: str = "items", **extra: Any) -> None:
        """Tell the executor how far this step is (``done`` of ``total`` work units)."""
        if self.progress is not None:
            self.progress({"done": done, "total": total, "unit": unit, **extra})
