"""Held-out report of a sweep: the Pareto set, chosen on validation, evaluated once on test.

    python -m studies.report --study unet2d-small-phantom \\
        --storage journal:runs/sweep/unet2d-small-phantom/study.journal

writes ``<study folder>/report.md``, ``pareto.csv`` and ``pareto.json`` (``--out`` to put them
elsewhere). The baseline row comes first, then one row per Pareto model (best validation Dice
first): recipe, params, size (deployable and zlib-compressed), compression factor and ONNX
Runtime / OpenVINO / PyTorch latency speed-up vs the baseline (paired: both timed in alternating
rounds, `compress.timing`), val and test Dice per region and mean, and test HD95. Each Pareto
model is evaluated through its deployable artifact (``model.onnx`` in ONNX Runtime or
OpenVINO, an int8 IR ``model.xml`` in OpenVINO) with its stored threshold(s); the baseline through its checkpoint with its stored
threshold. The Pareto set itself is `optuna.Study.best_trials` (validation objectives, feasible
trials only): the test split never influences which models are reported.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from studies.pareto import (
    LATENCY_NAMES,
    TrialModel,
    baseline_model,
    is_feasible,
    load_study,
    sweep_info,
    trial_models,
)
from studies.repeats import is_repeat
from studies.report_format import (
    DETECTION_FIELDS,
    SHORT_BACKENDS,
    dice_objective_name,
    feasible_rule,
    markdown_table,
    rows_csv,
    summary_line,
)
from unet.data.canonical import REGIONS, CanonicalDataset
from unet.io import write_text_atomic
from unet.killpoints import killpoint
from unet.stats import DEFAULT_MARGIN, DEFAULT_REGION_MARGIN, paired_comparison

_R = (*REGIONS, "mean")
PER_SUBJECT = "_test_per_subject"  # in-memory only: the rows' per-subject test Dice


def evaluate_test(
    forward: Any, spatial_dims: int, divisor: int, data: CanonicalDataset, threshold: Any, **kw: Any
) -> dict[str, Any]:
    """Mean Dice and HD95 per region on the test split (per subject volume)."""
    from unet.evaluate import evaluate_model

    return evaluate_model(
        forward,
        data,
        "test",
        threshold,
        hd95=True,
        spatial_dims=spatial_dims,
        divisor=divisor,
        **kw,
    )


def speedup(m: dict[str, Any], base: dict[str, Any], backend: str) -> float | None:
    """The paired speed-up vs the baseline on ``backend`` (``speedup_<backend>``, measured in
    alternating rounds); for metrics without it, the ratio of the two medians; None if unmeasured."""
    if f"speedup_{backend}" in m:
        return float(m[f"speedup_{backend}"])
    mine, theirs = m["latency_ms"].get(backend), base["latency_ms"].get(backend)
    if mine and theirs:
        return float(theirs["median"]) / float(mine["median"])
    return None


def _row(
    trial: str, label: str, m: dict[str, Any], base: dict[str, Any], test: dict[str, Any]
) -> dict[str, Any]:
    lat = m["latency_ms"]
    row: dict[str, Any] = {
        "trial": trial,
        "recipe": label,
        "params": m["params"],
        "nonzero_params": m.get("nonzero_params", m["params"]),
        "macs": m.get("macs"),
        "size_bytes": m["size_bytes"],
        "size_compressed_bytes": m["size_compressed_bytes"],
        "compression_factor": base["size_bytes"] / m["size_bytes"],
        "compression_factor_compressed": base["size_compressed_bytes"] / m["size_compressed_bytes"],
    }
    for short, backend in SHORT_BACKENDS.items():
        row[f"latency_ms_{short}"] = lat.get(backend, {}).get("median")
        if short != "torch":
            row[f"latency_iqr_ms_{short}"] = lat.get(backend, {}).get("iqr")
        row[f"speedup_{short}"] = speedup(m, base, backend)
    row.update({f"threshold_{r}": float(m["threshold"][r]) for r in REGIONS})
    for key in ("min_component", "min_volume"):  # absent in older metrics: nothing removed
        row.update({f"{key}_{r}": int((m.get(key) or {}).get(r, 0)) for r in REGIONS})
    row.update({f"val_dice_{r}": float(m["val_dice"][r]) for r in _R})
    row.update({f"test_dice_{r}": float(test["dice"][r]) for r in _R})
    row.update({f"test_hd95_{r}": float(test["hd95"][r]) for r in _R})
    return row


def baseline_row(
    study: optuna.Study, data: CanonicalDataset, *, threads: int | None = None, device: str = "cpu"
) -> dict[str, Any]:
    """The baseline's row (`studies.pareto.baseline_model`), evaluated on test like the others."""
    row = model_row(
        baseline_model(study),
        study.user_attrs["baseline_metrics"],
        data,
        threads=threads,
        device=device,
    )
    row["trial"] = "baseline"
    return row


def model_row(
    model: TrialModel,
    base: dict[str, Any],
    data: CanonicalDataset,
    *,
    threads: int | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """A Pareto model's row: stored val measurements and a test evaluation of its artifact."""
    from unet.checkpoint import read_checkpoint

    forward, config = model.forward(threads, device)
    patch = read_checkpoint(model.checkpoint)["meta"].get("patch_size")
    test = evaluate_test(
        forward,
        config.spatial_dims,
        config.divisor,
        data,
        model.threshold,
        patch_size=patch,
        min_component=model.min_component,
        min_volume=model.min_volume,
    )
    row = _row(str(model.number), model.label, model.metrics, base, test["mean"])
    row[PER_SUBJECT] = test["per_subject"]
    row["artifact"] = str(model.artifact_path)
    row["recipe_dict"] = model.recipe  # pareto.json only: the exact recipe to rebuild it
    return row


def open_data(study: optuna.Study, data: str | Path | None = None) -> CanonicalDataset:
    """The study's data file (or ``data``), checked against the stored fingerprint; the test
    volumes stay in memory while every Pareto model is evaluated on them."""
    info = sweep_info(study)
    ds = CanonicalDataset(data or info["data"], cache_mb=2048)
    if ds.fingerprint != info["data_fingerprint"]:
        raise ValueError(
            f"{ds.path}: not the data of study {study.study_name!r} (fingerprint "
            f"{ds.fingerprint} != {info['data_fingerprint']})"
        )
    return ds


def build_rows(
    study: optuna.Study,
    *,
    data: CanonicalDataset | str | Path | None = None,
    threads: int | None = None,
    device: str = "cpu",
    margin: float = DEFAULT_MARGIN,
    region_margin: float = DEFAULT_REGION_MARGIN,
) -> list[dict[str, Any]]:
    """Baseline row, then one row per Pareto model (best val mean Dice first), each compared
    paired with the baseline over the test subjects (`add_paired_columns`).

    ``data``: the study's data file if it moved (checked against the stored fingerprint), or an
    open data set used as it is (`studies.external`: another file's test split).
    A Pareto model whose folder is not on this machine (another worker host) is left out with
    a warning on stderr.
    """
    ds = data if isinstance(data, CanonicalDataset) else open_data(study, data)
    base = study.user_attrs["baseline_metrics"]
    pareto = sorted(
        trial_models(study, pareto_only=True),
        key=lambda m: (-m.val_dice["mean"], m.size_bytes),
    )
    for m in [baseline_model(study), *pareto]:
        m.check_folder()  # another study's folder: ValueError
    missing = [m.number for m in pareto if not m.checkpoint.is_file()]
    if missing:
        print(f"warning: trial folders of Pareto trials {missing} are not here", file=sys.stderr)
    rows = [baseline_row(study, ds, threads=threads, device=device)]
    rows += [
        model_row(m, base, ds, threads=threads, device=device)
        for m in pareto
        if m.number not in missing
    ]
    add_paired_columns(rows, margin=margin, region_margin=region_margin)
    return rows


def add_paired_columns(
    rows: list[dict[str, Any]],
    *,
    margin: float = DEFAULT_MARGIN,
    region_margin: float = DEFAULT_REGION_MARGIN,
) -> None:
    """Paired test comparison of every Pareto row with the baseline row (``rows[0]``), in place
    (`unet.stats.paired_comparison`): ``test_dice_delta`` (+ ``_lo``/``_hi``: 95% CI) for the
    mean and per region (``test_dice_delta_WT``), ``non_inferior``, per region the largest loss
    (``test_largest_loss_WT``: ``"phantom_014 1.00 -> 0.00"``, baseline -> model) and the
    `unet.detection` split (``test_empty_delta_WT``, ``test_empty_subjects_WT``,
    ``test_false_regions_WT``). The per-subject test results are dropped afterwards."""
    base = rows[0]
    reference = base.pop(PER_SUBJECT)
    base.update(margin=margin, region_margin=region_margin, n_test_subjects=len(reference))
    for row in rows[1:]:
        cmp = paired_comparison(
            row.pop(PER_SUBJECT), reference, margin=margin, region_margin=region_margin
        )
        for key in _R:
            name = "test_dice_delta" if key == "mean" else f"test_dice_delta_{key}"
            lo, hi = cmp.ci95[key]
            row.update({name: cmp.dice_delta[key], f"{name}_lo": lo, f"{name}_hi": hi})
        row["non_inferior"] = cmp.non_inferior
        row.update({f"test_largest_loss_{r}": cmp.worst_subject(r) for r in REGIONS})
        for r, d in cmp.detection.items():  # unet.detection: regions empty in the truth
            row.update({f"test_{k}_{r}": getattr(d, k) for k in DETECTION_FIELDS})


def report_markdown(
    study: optuna.Study, rows: Sequence[dict[str, Any]], data_path: str | Path | None = None
) -> str:
    """The report text (Markdown)."""
    from studies.machine import machine_markdown

    info = sweep_info(study)
    data = open_data(study, data_path)
    states = {s: len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState}
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    feasible = sum(1 for t in complete if is_feasible(t))
    repeats = sum(1 for t in complete if is_repeat(t))
    splits = ", ".join(f"{s} {len(data.split(s))}" for s in ("train", "val", "test"))
    machine = study.user_attrs.get("machine")
    trained = study.user_attrs.get("baseline_as_trained")
    as_trained = f"{trained['val_dice']['mean']:.4f}" if trained else "not recorded"
    backend = info.get("latency_backend", "ort_cpu")
    name = LATENCY_NAMES.get(backend, backend)
    return f"""# Compression sweep `{study.study_name}`: held-out report

{summary_line(rows, backend=backend)}

The Pareto set ({len(rows) - 1} model{"" if len(rows) == 2 else "s"}) was chosen on the **validation** split (objectives: {dice_objective_name(info)},
deployable size, {name} latency at batch 1; {feasible_rule(info)}). Each
model was then evaluated once on the **test** split with its stored threshold(s) and
post-processing (small-component removal and region-presence rule; all chosen on val; Dice and
HD95 per subject volume) and compared **paired** with the baseline over the same
{rows[0].get("n_test_subjects", "?")} test subjects: *test delta* is the mean over subjects of
(model - baseline) Dice with its 95% bootstrap CI; *non-inferior* means the mean's CI lower bound
is above -{rows[0].get("margin", 0.01):g} and every region's (WT, TC, ET) above
-{rows[0].get("region_margin", 0.03):g} (*worst region lo*: the lowest region lower bound, with
the subject whose Dice in that region fell most, baseline -> model: on 25 subjects one region
that is empty in the truth and marked by a few voxels, Dice 1 -> 0, can decide the verdict).
The baseline row is the trained model as dense fp32 ONNX with its thresholds (per region) and
post-processing searched on val, exactly like every trial's (as trained, with its stored
threshold: val mean Dice {as_trained}).

{markdown_table(rows, backend)}

*factor*: baseline size / size (deployable artifact); *x*: latency speed-up vs the baseline on
the same backend, paired: the median over {info["latency_runs"]} rounds in which the model and
the baseline ran back to back (batch 1, {info["threads"]} thread(s)), so machine load cancels;
*ms*: the model's own median (for information, taken under whatever load there was);
*zlib MB*: compressed artifact size (what unstructured sparsity saves). Full columns (HD95,
thresholds, minimum component sizes and region volumes per region, IQRs, MACs): `pareto.csv`.

## Study

- Trials: {states[TrialState.COMPLETE]} complete ({feasible} feasible; {repeats} repeated an \
earlier recipe and reused its result), {states[TrialState.FAIL]} failed, \
{states[TrialState.RUNNING]} running
- Data: `{info["data"]}` (fingerprint {info["data_fingerprint"]}; subjects: {splits})
- Baseline: `{info["baseline"]}` ({info["model"]})
- Seed {info["seed"]}; device {info["device"]}

## Machine

{machine_markdown(machine) if machine else "(not recorded)"}
"""


def write_report(
    study: optuna.Study,
    out_dir: str | Path,
    *,
    data: str | Path | None = None,
    threads: int | None = None,
    device: str = "cpu",
    margin: float = DEFAULT_MARGIN,
    region_margin: float = DEFAULT_REGION_MARGIN,
) -> list[Path]:
    """Evaluate the Pareto set on test; write ``report.md``, ``pareto.csv``, ``pareto.json``.

    ``data``: the canonical file if it moved (default: the path stored in the study);
    ``margin`` / ``region_margin``: non-inferiority margins of the paired test comparison.
    """
    out = Path(out_dir)
    rows = build_rows(
        study,
        data=data,
        threads=threads,
        device=device,
        margin=margin,
        region_margin=region_margin,
    )
    paths = [out / "report.md", out / "pareto.csv", out / "pareto.json"]
    write_text_atomic(paths[0], report_markdown(study, rows, data))
    killpoint("report.write")
    write_text_atomic(paths[1], rows_csv(rows))
    payload = {
        "study": study.study_name,
        "summary": summary_line(rows, sweep_info(study).get("latency_backend", "ort_cpu")),
        "baseline": rows[0],
        "pareto": rows[1:],
        "machine": study.user_attrs.get("machine"),
        "sweep": sweep_info(study),
    }
    write_text_atomic(paths[2], json.dumps(payload, indent=2))
    return paths


def parse_evaluation_arguments(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> argparse.Namespace:
    """Add the flags every Pareto-set evaluation takes (``--study``, ``--storage``,
    ``--threads``, ``--device``, ``--margin``, ``--region-margin``; also `studies.external`),
    parse ``argv`` and refuse negative margins with one ``error:`` line."""
    parser.add_argument("--study", required=True, help="study name")
    parser.add_argument("--storage", required=True, help="storage URL (journal:PATH, ...)")
    parser.add_argument("--threads", type=int, default=None, help="default: the sweep's")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="cpu or cuda")
    parser.add_argument(
        "--margin",
        type=float,
        default=DEFAULT_MARGIN,
        help="non-inferiority margin of the test mean Dice (Dice units)",
    )
    parser.add_argument(
        "--region-margin",
        type=float,
        default=DEFAULT_REGION_MARGIN,
        help="non-inferiority margin of every region's test Dice (Dice units)",
    )
    args = parser.parse_args(argv)
    if not (args.margin >= 0 and args.region_margin >= 0):
        parser.error(
            f"--margin and --region-margin must be >= 0, got {args.margin}, {args.region_margin}"
        )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m studies.report",
        description="Evaluate a stored sweep's Pareto set on the test split; write the report.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", default=None, help="output folder (default: the study folder)")
    parser.add_argument("--data", default=None, help="data file (default: the stored path)")
    args = parse_evaluation_arguments(parser, argv)
    try:
        study = load_study(args.storage, args.study)
        info = sweep_info(study)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        paths = write_report(
            study,
            args.out or info["study_dir"],
            data=args.data,
            threads=args.threads or info["threads"],
            device=args.device,
            margin=args.margin,
            region_margin=args.region_margin,
        )
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    print((Path(paths[0])).read_text(encoding="utf-8").split("\n\n")[1])
    for p in paths:
        print(f"wrote {p}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
