"""`Recipe`: one compression pipeline as a dataclass of primitives.

A trial of the sweep, a checkpoint's ``meta["recipe"]`` and a report row all carry the same
recipe, so any compressed model can be rebuilt from its recipe and its baseline::

    [regularise ->] prune [-> fine-tune -> prune ...] -> fine-tune -> cast -> threshold

    >>> Recipe(prune="structured", ratio=0.5, round_to=8, finetune_steps=200, precision="int8")
    >>> Recipe(prune="structured", ratio=0.5, round_to=8, finetune_steps=200, prune_rounds=4,
    ...        distill_weight=1.0, regularize_steps=200, regularize_strength=1e-3)
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from unet.selection import RULES

PRUNE_METHODS = ("none", "unstructured", "structured", "pairs")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
CALIBRATIONS = ("minmax", "entropy", "percentile")
THRESHOLD_MODES = ("fixed", "global", "per-region")
COMPONENT_MODES = ("keep", "search")  # post-processing after the threshold (unet.components)
SELECTION_RULES = RULES  # how the val searches choose (unet.selection)
RUNTIMES = ("ort", "openvino", "torch")  # where the artifact is deployed (compress.runners)
# Bounds of the recovery fields (inclusive unless said otherwise in `Recipe.validate`).
MAX_PRUNE_ROUNDS = 10
MAX_DISTILL_WEIGHT = 100.0
MAX_DISTILL_TEMPERATURE = 20.0
MAX_REGULARIZE_STEPS = 100_000
MAX_REGULARIZE_STRENGTH = 1.0
_FLOAT_FIELDS = (
    "int8_max_drop",
    "ratio",
    "finetune_lr",
    "distill_weight",
    "distill_temperature",
    "regularize_strength",
)


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
    * ``components``: ``keep`` every predicted voxel | ``search`` on val, per region, a minimum
      connected-component size (voxels) below which components are removed, then a minimum
      region volume below which the region is emptied (`unet.components`).
    * ``selection``: how those val searches choose: ``best`` (the val argmax) | ``one-se`` (the
      reference's thresholds and sizes unless val shows a gain beyond one standard error over
      subjects; `unet.selection`).

    Recovery (how a pruned model gets its accuracy back; `compress.recovery`):

    * ``prune_rounds``: reach ``ratio`` (or ``level_ratios``) in this many prune -> fine-tune
      rounds on a linear schedule, the ``finetune_steps`` split across the rounds (1 = one-shot).
    * ``distill_weight``: weight of the distillation loss from the unpruned baseline added to
      BCE + Dice during fine-tuning (0 = off; `compress.distill`); ``distill_temperature``.
    * ``regularize_steps``: steps of sparsity-inducing group regularisation of the baseline
      before structured / pair pruning (0 = off; `compress.regularize`), with coefficient
      ``regularize_strength`` (Torch-Pruning ``GroupNormPruner(reg=...)``).
    * ``runtime``: the deployment runtime the artifact is built for: ``ort`` (ONNX file; int8 =
      ORT static QDQ), ``openvino`` (ONNX read by OpenVINO; int8 = NNCF's IR, bf16 = OpenVINO's
      bf16 inference) or ``torch`` (the checkpoint; fp32/fp16/bf16, no int8).
    * ``int8_max_drop``: OpenVINO int8 only: NNCF's accuracy control keeps the int8 model's Dice
      on ``calibration_samples`` val samples within this absolute drop of the fp32 model's,
      reverting operators to f32 (0 = off: plain NNCF PTQ; `compress.openvino.quantize_nncf`).
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
    components: str = "keep"
    selection: str = "best"
    prune_rounds: int = 1
    distill_weight: float = 0.0
    distill_temperature: float = 1.0
    regularize_steps: int = 0
    regularize_strength: float = 1e-3
    runtime: str = "ort"
    int8_max_drop: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "level_ratios", tuple(float(r) for r in self.level_ratios))
        self.validate()
        for name in _FLOAT_FIELDS:  # 1 and 1.0 from JSON or flags make the same recipe
            object.__setattr__(self, name, float(getattr(self, name)))

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field for any value outside its domain."""
        _choice("prune", self.prune, PRUNE_METHODS)
        _choice("precision", self.precision, PRECISIONS)
        _choice("calibration", self.calibration, CALIBRATIONS)
        _choice("threshold", self.threshold, THRESHOLD_MODES)
        _choice("components", self.components, COMPONENT_MODES)
        _choice("runtime", self.runtime, RUNTIMES)
        _choice("selection", self.selection, SELECTION_RULES)
        if self.selection != "best" and (self.threshold, self.components) == ("fixed", "keep"):
            raise ValueError(
                "recipe: selection only applies when thresholds or components are searched "
                "(threshold is 'fixed', components 'keep')"
            )
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
        _integer("round_to", self.round_to, 1)
        _integer("finetune_steps", self.finetune_steps, 0)
        if not (_is_number(self.finetune_lr) and 0 < self.finetune_lr < math.inf):
            raise ValueError(
                f"recipe: finetune_lr must be a positive number, got {self.finetune_lr}"
            )
        _integer("calibration_samples", self.calibration_samples, 1)
        _number("int8_max_drop", self.int8_max_drop, 0.0, 0.5)
        if self.int8_max_drop > 0 and (self.precision, self.runtime) != ("int8", "openvino"):
            raise ValueError(
                "recipe: int8_max_drop (NNCF accuracy control) needs precision int8 and runtime "
                f"openvino, not {self.precision} on {self.runtime}"
            )
        self._validate_recovery()

    def _validate_recovery(self) -> None:
        d = Recipe.__dataclass_fields__
        _integer("prune_rounds", self.prune_rounds, 1, MAX_PRUNE_ROUNDS)
        _number("distill_weight", self.distill_weight, 0.0, MAX_DISTILL_WEIGHT)
        _number("distill_temperature", self.distill_temperature, 0.0, MAX_DISTILL_TEMPERATURE, True)
        _integer("regularize_steps", self.regularize_steps, 0, MAX_REGULARIZE_STEPS)
        _number("regularize_strength", self.regularize_strength, 0.0, MAX_REGULARIZE_STRENGTH, True)
        if self.prune_rounds > 1 and self.prune == "none":
            raise ValueError("recipe: prune_rounds > 1 needs pruning (prune is 'none')")
        if self.distill_weight > 0 and self.finetune_steps == 0:
            raise ValueError("recipe: distill_weight > 0 needs finetune_steps > 0")
        if (
            self.distill_weight == 0
            and self.distill_temperature != d["distill_temperature"].default
        ):
            raise ValueError("recipe: distill_temperature only applies with distill_weight > 0")
        if self.regularize_steps > 0 and self.prune not in ("structured", "pairs"):
            raise ValueError(
                f"recipe: regularize_steps only apply to structured/pairs pruning, "
                f"not {self.prune!r}"
            )
        if (
            self.regularize_steps == 0
            and self.regularize_strength != d["regularize_strength"].default
        ):
            raise ValueError("recipe: regularize_strength only applies with regularize_steps > 0")

    @property
    def label(self) -> str:
        """Short human-readable name, e.g. ``structured0.50+ft200+int8(minmax)+per-region``,
        ``reg200(0.001)+structured0.50/r8+gradual4+ft200+kd1(T2)+fp32+global+cc`` (``+cc``: small
        components removed and absent regions emptied, sizes searched on val; ``+1se``: the
        one-standard-error selection; ``@openvino`` / ``@torch`` appended for those runtimes)."""
        parts = []
        if self.regularize_steps:
            parts.append(f"reg{self.regularize_steps}({self.regularize_strength:g})")
        if self.prune == "pairs":
            parts.append("pairs[" + ",".join(f"{r:.2f}" for r in self.level_ratios) + "]")
        elif self.prune != "none":
            parts.append(f"{self.prune}{self.ratio:.2f}")
        else:
            parts.append("dense")
        if self.round_to > 1 and self.prune in ("structured", "pairs"):
            parts[-1] += f"/r{self.round_to}"
        if self.prune_rounds > 1:
            parts.append(f"gradual{self.prune_rounds}")
        if self.finetune_steps:
            parts.append(f"ft{self.finetune_steps}")
        if self.distill_weight:
            temperature = (
                f"(T{self.distill_temperature:g})" if self.distill_temperature != 1 else ""
            )
            parts.append(f"kd{self.distill_weight:g}{temperature}")
        if self.precision == "int8":
            control = f",ac{self.int8_max_drop:g}" if self.int8_max_drop else ""
            parts.append(f"int8({self.calibration}{control})")
        else:
            parts.append(self.precision)
        parts.append(self.threshold)
        if self.components == "search":
            parts.append("cc")
        if self.selection == "one-se":
            parts.append("1se")
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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(name: str, value: int, lo: int, hi: int | None = None) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool)
    if not ok or value < lo or (hi is not None and value > hi):
        domain = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"recipe: {name} must be an integer {domain}, got {value!r}")


def _number(name: str, value: float, lo: float, hi: float, open_low: bool = False) -> None:
    above_lo = _is_number(value) and (value > lo if open_low else value >= lo)
    if not (above_lo and value <= hi):
        low = "(" if open_low else "["
        raise ValueError(f"recipe: {name} must be a number in {low}{lo:g}, {hi:g}], got {value!r}")


def _ratio(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
        raise ValueError(f"recipe: {name} must be in [0, 1), got {value!r}")
