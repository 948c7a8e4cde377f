"""Held-out report of a sweep: the Pareto set, chosen on validation, evaluated once on test.

    python -m studies.report --study unet2d-small-phantom \\
        --storage journal:runs/sweep/unet2d-small-phantom/study.journal

writes ``<study folder>/report.md``, ``pareto.csv`` and ``pareto.json`` (``--out`` to put them
elsewhere). The baseline row comes first, then one row per Pareto model (best validation Dice
first): recipe, params, size (deployable and zlib-compressed), compression factor and ONNX
Runtime / OpenVINO / PyTorch latency speed-up vs the baseline (paired: both timed in alternating
rounds, `compress.timing`), val and test Dice per region and mean, and test HD95. Each Pareto
model is evaluated through its deployable artifact (``model.onnx`` in ONNX Runtime,
``model.xml`` in OpenVINO) with its stored threshold(s); the baseline through its checkpoint with its stored
threshold. The Pareto set itself is `optuna.Study.best_trials` (validation objectives, feasible
trials only): the test split never influences which models are reported.
"""

from __future__ import annotations

import argparse
import csv
import io
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
    load_study,
    sweep_info,
    trial_models,
)
from unet.data.canonical import REGIONS, CanonicalDataset
from unet.io import write_text_atomic

MAX_DICE_LOSS = 0.01  # "one point" of mean Dice on test, for the summary line
_R = (*REGIONS, "mean")
COLUMNS = (
    "trial",
    "recipe",
    "params",
    "nonzero_params",
    "macs",
    "size_bytes",
    "size_compressed_bytes",
    "compression_factor",
    "compression_factor_compressed",
    "latency_ms_ort",
    "latency_iqr_ms_ort",
    "speedup_ort",
    "latency_ms_ov",
    "latency_iqr_ms_ov",
    "speedup_ov",
    "latency_ms_torch",
    "speedup_torch",
    *(f"threshold_{r}" for r in REGIONS),
    *(f"val_dice_{r}" for r in _R),
    *(f"test_dice_{r}" for r in _R),
    *(f"test_hd95_{r}" for r in _R),
    "artifact",
)


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


# report column suffix -> latency backend
SHORT_BACKENDS = {"ort": "ort_cpu", "ov": "ov_cpu", "torch": "torch_cpu"}


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
        forward, config.spatial_dims, config.divisor, data, model.threshold, patch_size=patch
    )
    row = _row(str(model.number), model.label, model.metrics, base, test["mean"])
    row["artifact"] = str(model.artifact_path)
    row["recipe_dict"] = model.recipe  # pareto.json only: the exact recipe to rebuild it
    return row


def open_data(study: optuna.Study, data: str | Path | None = None) -> CanonicalDataset:
    """The study's data file (or ``data``), checked against the stored fingerprint."""
    info = sweep_info(study)
    ds = CanonicalDataset(data or info["data"])
    if ds.fingerprint != info["data_fingerprint"]:
        raise ValueError(
            f"{ds.path}: not the data of study {study.study_name!r} (fingerprint "
            f"{ds.fingerprint} != {info['data_fingerprint']})"
        )
    return ds


def build_rows(
    study: optuna.Study,
    *,
    data: str | Path | None = None,
    threads: int | None = None,
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """Baseline row, then one row per Pareto model (best val mean Dice first).

    A Pareto model whose folder is not on this machine (another worker host) is left out with
    a warning on stderr.
    """
    ds = open_data(study, data)
    base = study.user_attrs["baseline_metrics"]
    pareto = sorted(
        trial_models(study, pareto_only=True),
        key=lambda m: (-m.val_dice["mean"], m.size_bytes),
    )
    missing = [m.number for m in pareto if not m.checkpoint.is_file()]
    if missing:
        print(f"warning: trial folders of Pareto trials {missing} are not here", file=sys.stderr)
    rows = [baseline_row(study, ds, threads=threads, device=device)]
    rows += [
        model_row(m, base, ds, threads=threads, device=device)
        for m in pareto
        if m.number not in missing
    ]
    return rows


def summary_line(
    rows: Sequence[dict[str, Any]], max_loss: float = MAX_DICE_LOSS, backend: str = "ort_cpu"
) -> str:
    """Best compression factor and speed-up on ``backend`` among models within ``max_loss``
    test Dice."""
    key = "speedup_" + _short(backend)
    base = rows[0]["test_dice_mean"]
    ok = [r for r in rows[1:] if base - r["test_dice_mean"] <= max_loss]
    points = "1 point" if max_loss == 0.01 else f"{100 * max_loss:g} points"
    if not ok:
        return (
            f"No Pareto model stays within {points} of the baseline's test mean Dice ({base:.4f})."
        )
    size = max(ok, key=lambda r: r["compression_factor"])
    speed = max(ok, key=lambda r: r.get(key) or 0.0)
    name = LATENCY_NAMES.get(backend, backend)
    return (
        f"Best at <= {points} of mean-Dice loss on test (baseline {base:.4f}): "
        f"**{size['compression_factor']:.1f}x smaller** (trial {size['trial']}, {size['recipe']}, "
        f"test Dice {size['test_dice_mean']:.4f}) and an {name} speed-up of "
        f"**{speed.get(key) or 0.0:.2f}x** (trial {speed['trial']}, {speed['recipe']}, test Dice "
        f"{speed['test_dice_mean']:.4f})."
    )


def _short(backend: str) -> str:
    return {v: k for k, v in SHORT_BACKENDS.items()}.get(backend, backend)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def rows_csv(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([_fmt(row.get(c)) for c in COLUMNS])
    return buf.getvalue()


def _markdown_table(rows: Sequence[dict[str, Any]], backend: str = "ort_cpu") -> str:
    def mb(n: float) -> str:
        return f"{n / 1e6:.3f}"

    def opt(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    short = _short(backend)
    name = {"ort": "ORT", "ov": "OpenVINO"}.get(short, short)
    header = (
        f"| trial | recipe | params | size MB | zlib MB | factor | {name} ms | {name} x "
        "| torch ms | torch x | val Dice | test Dice WT | TC | ET | mean | test HD95 mean |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['trial']} | {r['recipe']} | {r['params']:,} | {mb(r['size_bytes'])} "
            f"| {mb(r['size_compressed_bytes'])} | {r['compression_factor']:.2f} "
            f"| {opt(r.get(f'latency_ms_{short}'), '.2f')} "
            f"| {opt(r.get(f'speedup_{short}'), '.2f')} "
            f"| {opt(r['latency_ms_torch'], '.2f')} | {opt(r['speedup_torch'], '.2f')} "
            f"| {r['val_dice_mean']:.4f} | {r['test_dice_WT']:.4f} | {r['test_dice_TC']:.4f} "
            f"| {r['test_dice_ET']:.4f} | {r['test_dice_mean']:.4f} | {r['test_hd95_mean']:.2f} |"
        )
    return "\n".join(lines)


def report_markdown(
    study: optuna.Study, rows: Sequence[dict[str, Any]], data_path: str | Path | None = None
) -> str:
    """The report text (Markdown)."""
    from studies.machine import machine_markdown

    info = sweep_info(study)
    data = open_data(study, data_path)
    states = {s: len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState}
    feasible = sum(
        1
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if all(v <= 0 for v in t.constraints.values())
    )
    splits = ", ".join(f"{s} {len(data.split(s))}" for s in ("train", "val", "test"))
    machine = study.user_attrs.get("machine")
    trained = study.user_attrs.get("baseline_as_trained")
    as_trained = f"{trained['val_dice']['mean']:.4f}" if trained else "not recorded"
    backend = info.get("latency_backend", "ort_cpu")
    name = LATENCY_NAMES.get(backend, backend)
    return f"""# Compression sweep `{study.study_name}`: held-out report

{summary_line(rows, backend=backend)}

The Pareto set ({len(rows) - 1} model{"" if len(rows) == 2 else "s"}) was chosen on the **validation** split (objectives: val
mean Dice, deployable size, {name} latency at batch 1; feasible = val mean-Dice
loss vs the baseline <= {info["max_dice_drop"]}). Each model was then evaluated once on the
**test** split with its stored threshold(s) (Dice and HD95 per subject volume, averaged).
The baseline row is the trained model as dense fp32 ONNX with its thresholds searched on val per
region, exactly like every trial's (as trained, with its stored threshold: val mean Dice
{as_trained}).

{_markdown_table(rows, backend)}

*factor*: baseline size / size (deployable artifact); *x*: latency speed-up vs the baseline on
the same backend, paired: the median over {info["latency_runs"]} rounds in which the model and
the baseline ran back to back (batch 1, {info["threads"]} thread(s)), so machine load cancels;
*ms*: the model's own median (for information, taken under whatever load there was);
*zlib MB*: compressed artifact size (what unstructured sparsity saves). Full columns (HD95 and
thresholds per region, IQRs, MACs): `pareto.csv`.

## Study

- Trials: {states[TrialState.COMPLETE]} complete ({feasible} feasible), \
{states[TrialState.FAIL]} failed, {states[TrialState.RUNNING]} running
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
) -> list[Path]:
    """Evaluate the Pareto set on test; write ``report.md``, ``pareto.csv``, ``pareto.json``.

    ``data``: the canonical file if it moved (default: the path stored in the study).
    """
    out = Path(out_dir)
    rows = build_rows(study, data=data, threads=threads, device=device)
    paths = [out / "report.md", out / "pareto.csv", out / "pareto.json"]
    write_text_atomic(paths[0], report_markdown(study, rows, data))
    write_text_atomic(paths[1], rows_csv(rows))
    payload = {
        "study": study.study_name,
        "summary": summary_line(rows),
        "baseline": rows[0],
        "pareto": rows[1:],
        "machine": study.user_attrs.get("machine"),
        "sweep": sweep_info(study),
    }
    write_text_atomic(paths[2], json.dumps(payload, indent=2))
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m studies.report",
        description="Evaluate a stored sweep's Pareto set on the test split; write the report.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--study", required=True, help="study name")
    parser.add_argument("--storage", required=True, help="storage URL (journal:PATH, ...)")
    parser.add_argument("--out", default=None, help="output folder (default: the study folder)")
    parser.add_argument("--data", default=None, help="data file (default: the stored path)")
    parser.add_argument("--threads", type=int, default=None, help="default: the sweep's")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args(argv)
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
        )
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    print((Path(paths[0])).read_text(encoding="utf-8").split("\n\n")[1])
    for p in paths:
        print(f"wrote {p}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
