"""Figures of a sweep, rebuilt from its storage (and the trial folders it points to).

    python -m studies.figures --study unet2d-small-phantom \\
        --storage journal:runs/sweep/unet2d-small-phantom/study.journal --out figures/

Writes PNG + PDF of:

* ``pareto_front``: the Dice objective (worst plausible val mean-Dice change vs the baseline) vs
  deployable size (log axis) and vs ONNX Runtime CPU latency;
  every trial faint, the Pareto set (3 objectives, feasible) highlighted and numbered, the
  two-objective front of each panel as a step line, the baseline marked;
* ``pruning_curves``: val mean Dice vs pruning compression factor (baseline non-zero params /
  the model's) per pruning method, fine-tuned vs not, marker by precision;
* ``threshold_curves``: val Dice vs binary threshold per region (and the mean) for Pareto models,
  with the global optimum (best mean over regions) and per-region optima marked;
* ``overlay``: one **test** subject, its most tumour-rich axial slice: the four modalities, the
  ground truth, the baseline and two Pareto models (best val Dice; smallest), test Dice in titles.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from studies.figures_overlay import write_overlay  # noqa: E402
from studies.pareto import (  # noqa: E402
    LATENCY_NAMES,
    TrialModel,
    baseline_model,
    has_mean_dice_objective,
    load_study,
    sweep_info,
    trial_models,
)
from unet.data.canonical import REGIONS  # noqa: E402
from unet.io import atomic_path  # noqa: E402

FORMATS = ("png", "pdf")
METHODS = ("unstructured", "structured", "pairs")
PRECISION_MARKERS = {"fp32": "o", "fp16": "s", "bf16": "D", "int8": "^"}
PARETO_COLOUR = "#d62728"
FAINT = "#9e9e9e"
DPI = 120


def save_figure(
    fig: Figure, out_dir: Path, name: str, formats: Sequence[str] = FORMATS
) -> list[Path]:
    """Write ``fig`` as ``out_dir/name.<fmt>`` for each format (atomically); close it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = out_dir / f"{name}.{fmt}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=DPI, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def log_axis(ax: Any, values: Sequence[float]) -> None:
    """Log-scale x axis with plain-number tick labels (1, 2, 5 steps; linear steps if narrow)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullLocator

    ax.set_xscale("log")
    lo, hi = min(values), max(values)
    if hi / lo < 4:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
    else:
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def _front_2d(points: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated points for (minimise x, maximise y), sorted by x."""
    order = np.lexsort((-points[:, 1], points[:, 0]))
    keep, best = [], -np.inf
    for i in order:
        if points[i, 1] > best:
            keep.append(i)
            best = points[i, 1]
    return np.asarray(keep, dtype=int)


def pareto_front_figure(study: optuna.Study) -> Figure:
    """Dice objective vs size and vs latency, all trials faint, the Pareto set highlighted.

    The y axis is the study's Dice objective (`studies.pareto.dice_objective`: the lower end of
    the paired 95% CI of the val mean-Dice change vs the baseline, the baseline at 0; the val
    mean Dice for studies made before it), so the highlighted set is the front that is drawn.
    """
    models = trial_models(study)
    pareto = {m.number for m in trial_models(study, pareto_only=True)}
    base = study.user_attrs["baseline_metrics"]
    info = sweep_info(study)
    backend = info.get("latency_backend", "ort_cpu")
    objective = {t.number: t.values[0] for t in study.get_trials(states=(TrialState.COMPLETE,))}
    old = has_mean_dice_objective(info)
    base_y = float(base["val_dice"]["mean"]) if old else 0.0
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), sharey=True, constrained_layout=True)
    axes_spec = (
        ("size_bytes", "deployable size (MB, log scale)", lambda m: m["size_bytes"] / 1e6),
        (
            "latency",
            f"{LATENCY_NAMES.get(backend, backend)} latency, batch 1 (ms; baseline / paired x)",
            lambda m: m.get("latency_objective_ms", m["latency_ms"][backend]["median"]),
        ),
    )
    for ax, (key, xlabel, xof) in zip(axes, axes_spec, strict=True):
        x = np.array([xof(m.metrics) for m in models])
        y = np.array([objective[m.number] for m in models])
        feas = np.array([m.feasible for m in models], dtype=bool)
        on = np.array([m.number in pareto for m in models], dtype=bool)
        if (~feas).any():
            ax.scatter(
                x[~feas],
                y[~feas],
                marker="x",
                s=22,
                color=FAINT,
                alpha=0.6,
                lw=1,
                label="infeasible trial",
            )
        if (feas & ~on).any():
            ax.scatter(x[feas & ~on], y[feas & ~on], s=22, color=FAINT, alpha=0.5, label="trial")
        if feas.any():
            idx = np.flatnonzero(feas)[_front_2d(np.stack([x[feas], y[feas]], 1))]
            ax.step(
                x[idx],
                y[idx],
                where="post",
                color=PARETO_COLOUR,
                alpha=0.35,
                lw=1,
                label="2-objective front",
            )
        ax.scatter(
            x[on],
            y[on],
            s=46,
            color=PARETO_COLOUR,
            edgecolor="black",
            lw=0.6,
            zorder=3,
            label="Pareto set (3 objectives)",
        )
        on_models = [m for m in models if m.number in pareto]
        for k, i in enumerate(np.argsort(x[on], kind="stable")):
            ax.annotate(  # alternate above / below, so that neighbours do not overprint
                f"#{on_models[i].number}",
                (x[on][i], y[on][i]),
                xytext=(4, 4 if k % 2 == 0 else -11),
                textcoords="offset points",
                fontsize=7.5,
                color="#7f0000",
            )
        bx = xof(base)
        ax.scatter(
            [bx],
            [base_y],
            marker="*",
            s=180,
            color="black",
            zorder=4,
            label="baseline",
        )
        if key == "size_bytes":
            log_axis(ax, [*x, bx])
        ax.set_xlabel(xlabel)
        ax.grid(True, which="both", alpha=0.25)
    axes[0].set_ylabel(
        "validation mean Dice (WT, TC, ET)"
        if old
        else "val mean-Dice change vs baseline\n(lower end of the paired 95% CI)"
    )
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside right upper", fontsize=8)
    labels = [f"#{m.number}: {m.label}" for m in models if m.number in pareto]
    fig.suptitle(f"Sweep {study.study_name}: {len(models)} trials, {len(labels)} on the Pareto set")
    if labels:
        ncol = 2 if len(labels) > 4 else 1
        fig.text(
            0.01,
            -0.01,
            "\n".join(_columns(labels, ncol)),
            fontsize=7.5,
            va="top",
            family="monospace",
        )
    return fig


def _columns(labels: list[str], ncol: int) -> list[str]:
    rows = -(-len(labels) // ncol)
    width = max(len(s) for s in labels) + 3
    return [
        "".join(
            labels[c * rows + r].ljust(width) for c in range(ncol) if c * rows + r < len(labels)
        )
        for r in range(rows)
    ]


def pruning_curves_figure(study: optuna.Study) -> Figure:
    """Val mean Dice vs pruning compression factor per method, with / without fine-tuning."""
    models = trial_models(study)
    base = study.user_attrs["baseline_metrics"]
    base_nz = base.get("nonzero_params", base["params"])
    fig, axes = plt.subplots(1, 3, figsize=(12, 4), sharey=True, constrained_layout=True)
    colours = {False: "#1f77b4", True: "#ff7f0e"}
    for ax, method in zip(axes, METHODS, strict=True):
        ms = [m for m in models if m.recipe["prune"] == method]
        factors = [1.0]
        for m in ms:
            factor = base_nz / max(1, m.metrics.get("nonzero_params", m.metrics["params"]))
            factors.append(factor)
            tuned = m.recipe["finetune_steps"] > 0
            ax.scatter(
                factor,
                m.val_dice["mean"],
                color=colours[tuned],
                marker=PRECISION_MARKERS.get(m.recipe["precision"], "o"),
                alpha=0.85 if m.feasible else 0.35,
                s=34,
                edgecolor="black",
                lw=0.4,
            )
        ax.scatter([1.0], [base["val_dice"]["mean"]], marker="*", s=160, color="black", zorder=4)
        ax.axhline(base["val_dice"]["mean"], color="black", lw=0.6, ls=":")
        if ms:
            log_axis(ax, factors)
        else:
            log_axis(ax, [0.8, 10.0])
            ax.set_xlim(0.8, 10.0)
            ax.text(0.5, 0.5, "no trials", transform=ax.transAxes, ha="center", color=FAINT)
        ax.set_title(f"{method} ({len(ms)} trial{'s' if len(ms) != 1 else ''})")
        ax.set_xlabel("pruning factor (baseline / non-zero params)")
        ax.grid(True, which="both", alpha=0.25)
    axes[0].set_ylabel("validation mean Dice")
    handles = [
        Line2D([], [], ls="", marker="o", color=colours[False], label="no fine-tune"),
        Line2D([], [], ls="", marker="o", color=colours[True], label="fine-tuned"),
        *(
            Line2D([], [], ls="", marker=mk, color="grey", label=p)
            for p, mk in PRECISION_MARKERS.items()
            if any(m.recipe["precision"] == p for m in models)
        ),
        Line2D([], [], ls="", marker="*", color="black", markersize=10, label="baseline"),
    ]
    fig.legend(
        handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False
    )
    fig.suptitle("Pruning curves (faded: infeasible, Dice loss above the limit)")
    return fig


def _name(m: TrialModel) -> str:
    return "baseline" if m.number < 0 else f"#{m.number}"


def _colour(m: TrialModel, k: int) -> str:
    return "black" if m.number < 0 else f"C{k - 1}"


def _curve(curve: dict[str, Any], key: str) -> tuple[np.ndarray, np.ndarray] | None:
    c = curve.get(key)
    if not c:
        return None
    t = c.get("threshold", c.get("t"))
    return np.asarray(t, dtype=float), np.asarray(c["dice"], dtype=float)


def threshold_curves_figure(study: optuna.Study, max_models: int = 4) -> Figure | None:
    """Val Dice vs threshold per region: the baseline and up to ``max_models`` Pareto models."""
    chosen = []
    pareto = sorted(trial_models(study, pareto_only=True), key=lambda m: -m.val_dice["mean"])
    for m in [baseline_model(study), *pareto]:
        m.check_folder()  # another study's folder: ValueError
        try:
            record = m.metrics_file()
        except (OSError, ValueError):
            continue
        if record.get("threshold_curve"):
            chosen.append((m, record["threshold_curve"], record.get("threshold_mode", "?")))
        if len(chosen) == max_models + 1:
            break
    if not chosen:
        return None
    keys = (*REGIONS, "mean")
    fig, axes = plt.subplots(1, len(keys), figsize=(13, 3.8), sharey=True, constrained_layout=True)
    colours = [_colour(m, k) for k, (m, _, _) in enumerate(chosen)]
    for (m, curve, mode), colour in zip(chosen, colours, strict=True):
        mean = _curve(curve, "mean")
        t_global = mean[0][int(np.argmax(mean[1]))] if mean is not None else None
        for ax, key in zip(axes, keys, strict=True):
            c = _curve(curve, key)
            if c is None:
                continue
            t, d = c
            ax.plot(t, d, color=colour, lw=1.3, label=f"{_name(m)} ({mode})")
            if t_global is not None:
                ax.plot(
                    [t_global],
                    [np.interp(t_global, t, d)],
                    "o",
                    color=colour,
                    ms=6,
                    mfc="white",
                    mew=1.5,
                )
            if key != "mean":
                i = int(np.argmax(d))
                ax.plot([t[i]], [d[i]], "v", color=colour, ms=7)
    for ax, key in zip(axes, keys, strict=True):
        ax.set_title(f"{key}" if key != "mean" else "mean of regions")
        ax.set_xlabel("binary threshold on the sigmoid")
        ax.set_xlim(0, 1)
        ax.grid(True, alpha=0.25)
    axes[0].set_ylabel("validation Dice")
    handles = [
        *(
            Line2D(
                [], [], color=colour, label=f"{_name(m)}: {m.label}" if m.number >= 0 else m.label
            )
            for (m, _, _), colour in zip(chosen, colours, strict=True)
        ),
        Line2D([], [], ls="", marker="o", mfc="white", color="black", label="global optimum"),
        Line2D([], [], ls="", marker="v", color="black", label="per-region optimum"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle("Threshold curves of the baseline and Pareto models (validation split)")
    return fig


def write_figures(
    study: optuna.Study,
    out_dir: str | Path,
    *,
    data: str | Path | None = None,
    threads: int | None = None,
) -> list[Path]:
    """Every figure of the study into ``out_dir`` (PNG + PDF); returns the written paths.

    ``data``: the canonical file if it moved (default: the path stored in the study).
    """
    out = Path(out_dir)
    if not trial_models(study):
        return []
    paths = save_figure(pareto_front_figure(study), out, "pareto_front")
    paths += save_figure(pruning_curves_figure(study), out, "pruning_curves")
    fig = threshold_curves_figure(study)
    if fig is not None:
        paths += save_figure(fig, out, "threshold_curves")
    paths += write_overlay(study, out, data=data, threads=threads, formats=FORMATS)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m studies.figures",
        description="Rebuild a sweep's figures from its storage.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--study", required=True, help="study name")
    parser.add_argument("--storage", required=True, help="storage URL (journal:PATH, ...)")
    parser.add_argument("--out", default="figures", help="output folder")
    parser.add_argument("--data", default=None, help="data file (default: the stored path)")
    parser.add_argument("--threads", type=int, default=None, help="default: the sweep's")
    args = parser.parse_args(argv)
    try:
        study = load_study(args.storage, args.study)
        info = sweep_info(study)
        paths = write_figures(
            study, args.out, data=args.data, threads=args.threads or info["threads"]
        )
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    if not paths:
        print(f"error: study {args.study!r} has no complete trials", file=sys.stderr)
        return 1
    for p in paths:
        print(f"wrote {p}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
