"""Read a stored sweep: its Pareto models and every trial's artifacts, from the storage alone.

Pick a model of a finished study and use it (PyTorch or ONNX Runtime, stored threshold)::

    from studies.pareto import pareto_models
    from unet import load_checkpoint

    models = pareto_models("journal:runs/sweep/unet2d-small-phantom/study.journal",
                           "unet2d-small-phantom")             # Pareto set, best val Dice first
    best = models[0]
    print(best.label, best.size_bytes, best.latency_ms, best.val_dice)
    model, meta = load_checkpoint(best.checkpoint)            # PyTorch; meta["threshold"]
    forward, config = best.forward(threads=2)                 # the deployable artifact (ONNX)

What a sweep (`studies.prune_sweep`) stores, and this module reads:

* study user attributes: ``sweep`` (data file and fingerprint, baseline checkpoint, seeds,
  threads, study folder, ...), ``baseline_metrics`` (the reference: the baseline with its
  thresholds searched on val, `baseline_model`), ``baseline_as_trained``, ``machine``;
* trial user attributes: ``recipe`` (`compress.recipe.Recipe.to_dict`), ``label``,
  ``trial_dir`` (``<study folder>/trials/<number>``), ``metrics`` (the compressed model's
  measurements, as in ``metrics.json``), ``dice_drop`` (val mean-Dice loss), ``dice_drop_bound``
  (the loss at the lower end of its paired 95% CI), ``region_drop_bound`` (the same for the
  worst region), ``paired_val`` (`unet.stats.paired_comparison` over the val subjects),
  ``worker``; ``error`` for failed trials;
* trial values: (val mean Dice, deployable size in bytes, latency in ms on the sweep's
  ``latency_backend``: the baseline's median divided by the trial's paired speed-up,
  `latency_objective_ms`; also stored in the trial's metrics as ``latency_objective_ms``);
  the constraint ``dice_drop`` (feasible when ``dice_drop_bound`` <= ``--max-dice-drop`` and
  ``region_drop_bound`` <= ``--max-region-drop``: `studies.sweep_worker.constraint_value`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from compress.deploy import artifact_name
from compress.recipe import Recipe
from studies.repeats import is_repeat
from unet.config import UNetConfig
from unet.inference import Forward

# (worst plausible val mean-Dice change vs the baseline, deployable bytes, latency ms); the
# latency name is kept from the first studies (it names the sweep's backend's latency)
OBJECTIVES = ("val_dice_delta_lo", "size_bytes", "latency_ms_ort")
OLD_OBJECTIVES = ("val_dice_mean", "size_bytes", "latency_ms_ort")  # studies before 2026-12-01
LATENCY_NAMES = {
    "ort_cpu": "ONNX Runtime CPU",
    "ov_cpu": "OpenVINO CPU",
    "torch_cpu": "PyTorch CPU",
    "ort_cuda": "ONNX Runtime CUDA",
    "torch_cuda": "PyTorch CUDA",
}


def has_mean_dice_objective(info: dict[str, Any]) -> bool:
    """Whether a study (its ``sweep`` info) was made with the plain val mean Dice as its first
    objective (`OLD_OBJECTIVES`) rather than `dice_objective`."""
    return list(info.get("objectives", OLD_OBJECTIVES))[0] == OLD_OBJECTIVES[0]


def dice_objective(
    metrics: dict[str, Any], paired: dict[str, Any] | None, reference_dice: float
) -> float:
    """The sweep's Dice objective (maximised): the lower end of the paired 95% bootstrap CI of
    (trial - baseline) val mean Dice over the val subjects (`unet.stats.paired_comparison`),
    i.e. the worst plausible change; without a paired comparison (a baseline measured by an
    older version), the point change ``val mean Dice - reference_dice``.

    Why not the val mean itself: one val subject whose Dice flips (a baseline failure the trial
    happens to fix, or the reverse) moves the mean of 25 subjects by up to 4 points, so the
    plain mean ranked first the models that were lucky on one subject, and such a model
    dominated the Pareto set of two default runs and then lost on test. The lower bound rewards
    a model that agrees with the baseline on every subject and still credits a consistent gain.
    """
    if paired:
        return float(paired["ci95"]["mean"][0])
    return float(metrics["val_dice"]["mean"]) - float(reference_dice)


def latency_objective_ms(
    metrics: dict[str, Any], backend: str = "ort_cpu", reference_ms: float | None = None
) -> float:
    """The sweep's latency objective (ms) of an M dict on ``backend``.

    With a paired speed-up (``speedup_<backend>``, `compress.timing`) and the baseline's median
    ``reference_ms`` (measured once per study, fixed): ``reference_ms / speedup``, so machine
    load during a trial cancels out; otherwise the trial's own median (older studies).
    """
    speedup = metrics.get(f"speedup_{backend}")
    if speedup and reference_ms:
        return float(reference_ms) / float(speedup)
    return float(metrics["latency_ms"][backend]["median"])


DIRECTIONS = ("maximize", "minimize", "minimize")
CONSTRAINT = "dice_drop"


@dataclass(frozen=True)
class TrialModel:
    """One finished trial of a sweep and the paths of its artifacts."""

    number: int
    label: str
    recipe: dict[str, Any]
    metrics: dict[str, Any]
    trial_dir: Path
    artifact: str
    feasible: bool

    @property
    def checkpoint(self) -> Path:
        """``checkpoint.pt``: loads with `unet.load_checkpoint` (pruned widths, threshold)."""
        return self.trial_dir / "checkpoint.pt"

    @property
    def onnx(self) -> Path:
        """``model.onnx`` (fp32 / fp16 / int8 as the recipe says; ORT-runtime recipes only)."""
        return self.trial_dir / "model.onnx"

    @property
    def artifact_path(self) -> Path:
        """The deployable artifact whose size and latency were measured."""
        return self.trial_dir / self.artifact

    @property
    def threshold(self) -> dict[str, float]:
        return dict(self.metrics["threshold"])

    @property
    def min_component(self) -> dict[str, int] | None:
        """Minimum connected-component sizes (voxels) chosen on val; None: nothing removed."""
        return self._voxels("min_component")

    @property
    def min_volume(self) -> dict[str, int] | None:
        """Minimum region volumes (voxels, the presence rule) chosen on val; None: none."""
        return self._voxels("min_volume")

    def _voxels(self, key: str) -> dict[str, int] | None:
        spec = self.metrics.get(key)
        return dict(spec) if spec is not None else None

    @property
    def val_dice(self) -> dict[str, float]:
        return dict(self.metrics["val_dice"])

    @property
    def size_bytes(self) -> int:
        return int(self.metrics["size_bytes"])

    @property
    def latency_ms(self) -> float:
        """The sweep's latency objective at batch 1 in ms (`latency_objective_ms`; the median
        ONNX Runtime CPU latency for studies made before it was stored)."""
        if "latency_objective_ms" in self.metrics:
            return float(self.metrics["latency_objective_ms"])
        return float(self.metrics["latency_ms"]["ort_cpu"]["median"])

    def check_folder(self) -> None:
        """`ValueError` when the trial folder's ``metrics.json`` records another model than the
        study does (size or val Dice differ). ``trial_dir`` is stored as the sweep wrote it,
        relative to its working directory; read from another directory it can name another
        study's folder, whose numbers must not be reported as these. A folder without a
        ``metrics.json`` (e.g. on another worker host) has nothing to check."""
        try:
            found = self.metrics_file().get("compressed")
        except (OSError, ValueError):
            return
        if found is None:
            return
        if found.get("size_bytes") != self.size_bytes or found.get("val_dice") != self.val_dice:
            raise ValueError(
                f"{self.trial_dir}: holds another model than trial {self.number} of this study "
                f"({found.get('size_bytes')} bytes, val Dice {found.get('val_dice', {}).get('mean')}"
                f"; the study recorded {self.size_bytes} bytes, {self.val_dice.get('mean')}): run "
                "from the directory the sweep ran in"
            )

    def metrics_file(self) -> dict[str, Any]:
        """The trial's ``metrics.json`` (includes the threshold curve)."""
        return json.loads((self.trial_dir / "metrics.json").read_text(encoding="utf-8"))

    def forward(
        self, threads: int | None = None, device: str = "cpu"
    ) -> tuple[Forward, UNetConfig]:
        """A `unet.inference.Forward` running the deployable artifact (ONNX in ONNX Runtime,
        ONNX or IR in OpenVINO with the recipe's precision, or the checkpoint), and the model's config."""
        from compress.cast import cast_module
        from compress.deploy import artifact_forward
        from unet.checkpoint import load_checkpoint

        model, _ = load_checkpoint(self.checkpoint)
        precision = self.recipe.get("precision", "fp32")
        if self.artifact.endswith(".pt") and precision in ("fp16", "bf16"):
            cast_module(model, precision)
        runtime = self.recipe.get("runtime", "ort")
        forward = artifact_forward(
            runtime, precision, self.artifact_path, model, threads=threads, device=device
        )
        return forward, model.config


def baseline_model(study: optuna.Study) -> TrialModel:
    """The sweep's reference model: the baseline through the identity recipe (dense fp32 ONNX,
    thresholds searched on val), in ``<study folder>/baseline/``; ``number`` is -1."""
    info = sweep_info(study)
    recipe = dict(info["baseline_recipe"])
    return TrialModel(
        number=-1,
        label="baseline (" + Recipe.from_dict(recipe).label + ")",
        recipe=recipe,
        metrics=dict(study.user_attrs["baseline_metrics"]),
        trial_dir=Path(info["baseline_dir"]),
        artifact=artifact_name(recipe.get("runtime", "ort"), recipe.get("precision", "fp32")),
        feasible=True,
    )


def load_study(storage: str | BaseStorage, study_name: str) -> optuna.Study:
    """Load a stored study; ``storage`` is a URL (see `studies.storage`) or a storage object."""
    if isinstance(storage, str):
        from studies.storage import journal_path, open_storage

        path = journal_path(storage)
        if path is not None and not path.is_file():
            raise ValueError(f"{path}: no such journal file")
        storage = open_storage(storage)
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        names = optuna.study.get_all_study_names(storage)
        raise ValueError(
            f"no study {study_name!r} in this storage (it has: {', '.join(names) or 'none'})"
        ) from None


def sweep_info(study: optuna.Study) -> dict[str, Any]:
    """The ``sweep`` study attribute; `ValueError` if the study was not made by a sweep."""
    info = study.user_attrs.get("sweep")
    if not isinstance(info, dict):
        raise ValueError(f"study {study.study_name!r} was not written by studies.prune_sweep")
    return info


def is_feasible(trial: FrozenTrial) -> bool:
    """Whether every constraint of ``trial`` holds (Optuna's rule: each value <= 0)."""
    return all(v <= 0.0 for v in trial.constraints.values())


def as_trial_model(trial: FrozenTrial) -> TrialModel:
    """The `TrialModel` of a COMPLETE sweep trial."""
    attrs = trial.user_attrs
    return TrialModel(
        number=trial.number,
        label=str(attrs["label"]),
        recipe=dict(attrs["recipe"]),
        metrics=dict(attrs["metrics"]),
        trial_dir=Path(attrs["trial_dir"]),
        artifact=str(attrs.get("artifact", "model.onnx")),
        feasible=is_feasible(trial),
    )


def trial_models(study: optuna.Study, *, pareto_only: bool = False) -> list[TrialModel]:
    """Every COMPLETE trial (or only the Pareto set, chosen on validation), by trial number;
    each model once: a trial that repeated an earlier recipe (`studies.repeats`) is left out."""
    trials = (
        study.best_trials
        if pareto_only
        else study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    )
    models = (as_trial_model(t) for t in trials if not is_repeat(t))
    return sorted(models, key=lambda m: m.number)


def pareto_models(storage: str | BaseStorage, study_name: str) -> list[TrialModel]:
    """The Pareto set of a stored sweep (feasible trials only), best validation Dice first."""
    study = load_study(storage, study_name)
    models = trial_models(study, pareto_only=True)
    return sorted(models, key=lambda m: (-m.val_dice["mean"], m.size_bytes))
