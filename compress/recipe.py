"""`Recipe`: one compression pipeline as a dataclass of primitives.

A trial of the sweep, a checkpoint's ``meta["recipe"]`` and a report row all carry the same
recipe, so any compressed model can be rebuilt from its recipe and its baseline::

    prune -> fine-tune -> cast -> threshold

    >>> Recipe(prune="structured", ratio=0.5, round_to=8, finetune_steps=200, precision="int8")
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

PRUNE_METHODS = ("none", "unstructured", "structured", "pairs")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
CALIBRATIONS = ("minmax", "entropy", "percentile")
THRESHOLD_MODES = ("fixed", "global", "per-region")
RUNTIMES = ("ort", "openvino", "torch")  # where the artifact is deployed (compress.runners)


@dataclass(frozen=True)
class Recipe:
    """What to do to a trained model. Field meanings and units:

    * ``prune``: ``none`` | ``unstructured`` (global L1 over all conv weights; ``ratio`` = fraction
      of conv weights zeroed) | ``structured`` (whole channels, globally ranked; ``ratio`` = fraction
      of channels removed) | ``pairs`` (encoder-decoder pairs; one ratio per level in ``level_ratios``).
    * ``round_to``: structured channel counts are rounded to a multiple of this (1 = no rounding).
    * ``finetune_steps``: BCE+Dice optimizer steps after pruning (0 allowed); ``finetune_lr``.
    * ``precision``: ``fp32`` | ``fp16`` | ``bf16`` | ``int8`` (ONNX Runtime static QDQ);
      ``calibration``: int8 calibration method, on ``calibration_samples`` training inputs.
    * ``threshold``: ``fixed`` (keep the baseline's) | ``global`` | ``per-region`` search on val.
    * ``runtime``: the deployment runtime the artifact is built for: ``ort`` (ONNX file; int8 =
      ORT static QDQ), ``openvino`` (IR ``model.xml``/``.bin``; int8 = NNCF, bf16 = OpenVINO's
      bf16 inference) or ``torch`` (the checkpoint; fp32/fp16/bf16, no int8).
    """

    prune: str = "none"
    ratio: float = 0.0
    level_ratios: tuple[float, ...] = ()
    round_to: int = 1
    finetune_steps: int = 0
    finetune_lr: float = 5e-4
    precision: str = "fp32"
    calibration: str = "minmax"
    calibration_samples: int = 32
    threshold: str = "global"
    runtime: str = "ort"

    def __post_init__(self) -> None:
        object.__setattr__(self, "level_ratios", tuple(float(r) for r in self.level_ratios))
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field for any value outside its domain."""
        _choice("prune", self.prune, PRUNE_METHODS)
        _choice("precision", self.precision, PRECISIONS)
        _choice("calibration", self.calibration, CALIBRATIONS)
        _choice("threshold", self.threshold, THRESHOLD_MODES)
        _choice("runtime", self.runtime, RUNTIMES)
        if self.runtime == "torch" and self.precision == "int8":
            raise ValueError("recipe: precision int8 needs runtime ort or openvino, not torch")
        _ratio("ratio", self.ratio)
        for i, r in enumerate(self.level_ratios):
            _ratio(f"level_ratios[{i}]", r)
        if self.prune == "pairs" and not self.level_ratios:
            raise ValueError("recipe: prune='pairs' needs level_ratios (one ratio per U-Net level)")
        if self.prune != "pairs" and self.level_ratios:
            raise ValueError(
                f"recipe: level_ratios only apply to prune='pairs', not {self.prune!r}"
            )
        if self.prune in ("none", "pairs") and self.ratio != 0.0:
            raise ValueError(
                f"recipe: ratio only applies to unstructured/structured pruning, not {self.prune!r}"
            )
        if self.round_to < 1:
            raise ValueError(f"recipe: round_to must be >= 1, got {self.round_to}")
        if self.finetune_steps < 0:
            raise ValueError(f"recipe: finetune_steps must be >= 0, got {self.finetune_steps}")
        if not (self.finetune_lr > 0 and math.isfinite(self.finetune_lr)):
            raise ValueError(
                f"recipe: finetune_lr must be a positive number, got {self.finetune_lr}"
            )
        if self.calibration_samples < 1:
            raise ValueError(
                f"recipe: calibration_samples must be >= 1, got {self.calibration_samples}"
            )

    @property
    def label(self) -> str:
        """Short human-readable name, e.g. ``structured0.50+ft200+int8(minmax)+per-region``
        (``@openvino`` / ``@torch`` appended for those runtimes)."""
        parts = []
        if self.prune == "pairs":
            parts.append("pairs[" + ",".join(f"{r:.2f}" for r in self.level_ratios) + "]")
        elif self.prune != "none":
            parts.append(f"{self.prune}{self.ratio:.2f}")
        else:
            parts.append("dense")
        if self.round_to > 1 and self.prune in ("structured", "pairs"):
            parts[-1] += f"/r{self.round_to}"
        if self.finetune_steps:
            parts.append(f"ft{self.finetune_steps}")
        parts.append(f"int8({self.calibration})" if self.precision == "int8" else self.precision)
        parts.append(self.threshold)
        label = "+".join(parts)
        return label if self.runtime == "ort" else f"{label}@{self.runtime}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["level_ratios"] = list(self.level_ratios)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recipe:
        """Build from a dict; an unknown field is an error naming it."""
        if not isinstance(d, dict):
            raise ValueError(f"recipe must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"recipe: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**d)

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> Recipe:
        p = Path(path)
        try:
            return cls.from_dict(json.loads(p.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise ValueError(f"{p}: no such recipe file") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{p}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{p}: {exc}") from None


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"recipe: {name} must be one of {allowed}, got {value!r}")


def _ratio(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
        raise ValueError(f"recipe: {name} must be in [0, 1), got {value!r}")
