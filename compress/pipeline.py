"""The compression pipeline: one recipe applied to a trained checkpoint, artifacts and numbers.

    from compress.pipeline import compress_checkpoint
    result = compress_checkpoint("runs/unet2d-small.pt", "runs/phantom.h5", recipe, "runs/s50")

The command line is `compress.apply`:

    python -m compress.apply --checkpoint runs/unet2d-small.pt --data runs/phantom.h5 \\
        --out runs/s50-int8 --prune structured --ratio 0.5 --round-to 8 \\
        --finetune-steps 200 --precision int8 --threshold per-region

or ``--recipe recipe.json``. Steps: prune -> fine-tune (training split; with the recipe's
recovery methods, `compress.recovery`) -> export + cast (int8 calibrated on training-split
inputs) -> threshold search (validation split) -> post-processing (small-component removal and
the region-presence rule, sizes searched on the validation split with ``components="search"``,
`compress.components`; both val steps in `compress.validation`) -> measure.
The test split is never read here. Writes into ``--out``:

* ``model.onnx``: the deployable ONNX model (fp32 / fp16 / int8 QDQ; for ``bf16`` the fp32 ONNX,
  since ONNX Runtime's CPU provider has no bf16 convolutions: the bf16 artifact is the checkpoint);
* ``checkpoint.pt``: importable with ``unet.load_checkpoint`` (pruned widths, stored threshold,
  recipe, metrics; sparse storage after unstructured pruning; fp16/bf16 weights for those precisions);
* ``recipe.json`` and ``metrics.json`` = ``{"baseline": M, "compressed": M, ...}`` where each M has
  ``params``, ``macs``, ``size_bytes``, ``size_compressed_bytes``, ``latency_ms``
  (``{"ort_cpu": {"median", "iqr"}, "torch_cpu": {...}}``), ``threshold``, ``min_component``
  and ``min_volume`` (voxels per region, 0 = keep all; `unet.components`), ``val_dice`` and
  ``val_per_subject`` (Dice per val subject at that threshold and post-processing), and
  ``paired_val``: the paired comparison of compressed vs baseline over the val subjects
  (`unet.stats.paired_comparison`: Dice delta per region and mean, 95% bootstrap CI,
  ``non_inferior`` at margins 0.01 / 0.03).

With ``runtime="openvino"`` in the recipe (``--runtime openvino``) the artifact is the
``model.onnx`` OpenVINO reads (bf16 is OpenVINO's bf16 inference on the fp32 ONNX), or for int8
NNCF's IR ``model.xml`` + ``model.bin`` (`compress.deploy`); with ``runtime="torch"`` it is
``checkpoint.pt``. The compressed M also holds ``paired`` and ``speedup_<backend>``: the speed-up vs the baseline measured in
alternating rounds on the same backend (`compress.timing.paired_latency`).

``size_bytes`` is the size of the deployable artifact (``model.onnx``; ``checkpoint.pt`` for bf16);
``size_compressed_bytes`` its zlib-6 size, which is what unstructured sparsity can save.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from compress.cast import cast_module
from compress.deploy import (
    artifact_files,
    artifact_forward,
    artifact_name,
    latency_backends,
    write_float_onnx,
    write_openvino,
)
from compress.export import check_parity, export_onnx, ort_forward, ort_session
from compress.measure import measure
from compress.quantize import quantize_int8
from compress.recipe import Recipe
from compress.recovery import recover
from compress.runners import reference_calls
from compress.teacher_cache import TeacherCache
from compress.validation import paired_val, validate
from unet.checkpoint import load_checkpoint, save_checkpoint
from unet.data.canonical import CanonicalDataset
from unet.data.datasets import sample_inputs, sample_pairs
from unet.inference import DEFAULT_PATCH_3D, round_up
from unet.io import write_text_atomic
from unet.models import UNet


def _as_data(data: CanonicalDataset | str | Path) -> CanonicalDataset:
    return data if isinstance(data, CanonicalDataset) else CanonicalDataset(data)


def measure_spatial(model: UNet, data: CanonicalDataset, meta: dict[str, Any]) -> tuple[int, ...]:
    """Input size for MACs and latency: one axial slice (2D) or one inference window (3D)."""
    cfg = model.config
    d, h, w = data.shape(data.split("val")[0])
    sizes = (h, w) if cfg.spatial_dims == 2 else tuple(meta.get("patch_size") or DEFAULT_PATCH_3D)
    return tuple(round_up(s, cfg.divisor) for s in sizes)


def _metrics(
    model: UNet,
    spatial: tuple[int, ...],
    onnx_path: Path | None,
    artifact: Path,
    threads: int,
    runs: int,
    device: str,
    *,
    backends: Sequence[str] | None = None,
    precision: str = "fp32",
    references: Mapping[str, Callable[[], object]] | None = None,
) -> dict[str, Any]:
    if backends is None:
        backends = latency_backends("ort", device)
    m = measure(
        model,
        spatial,
        onnx_path=onnx_path,
        ov_path=artifact if artifact.suffix in (".xml", ".onnx") else None,
        precision=precision,
        artifact=artifact_files(artifact),
        threads=threads,
        runs=runs,
        backends=backends,
        references=references,
    ).to_dict()
    # the paired speed-up vs the reference, per backend (see compress.timing)
    m.update({f"speedup_{b}": p["speedup"] for b, p in m["paired"].items()})
    return m


def measure_baseline(
    baseline: str | Path,
    data: CanonicalDataset | str | Path,
    *,
    threads: int = 2,
    latency_runs: int = 20,
    device: str = "cpu",
) -> dict[str, Any]:
    """The baseline's M (see module docstring): exported to a temporary fp32 ONNX, its stored threshold."""
    model, meta = load_checkpoint(baseline)
    data = _as_data(data)
    spatial = measure_spatial(model, data, meta)
    with tempfile.TemporaryDirectory(prefix="unet-compress-") as tmp:
        onnx_path = export_onnx(model, Path(tmp) / "model.onnx")
        forward = ort_forward(ort_session(onnx_path, threads=threads))
        val = validate(
            forward,
            model,
            data,
            "fixed",
            meta.get("threshold"),
            meta.get("patch_size"),
            fixed_post=meta,
        )
        m = _metrics(model, spatial, onnx_path, onnx_path, threads, latency_runs, device)
    return {
        **m,
        "threshold": val.threshold,
        "min_component": val.min_component,
        "min_volume": val.min_volume,
        "val_dice": val.val_dice,
        "val_per_subject": val.per_subject,
    }


def compress_checkpoint(
    baseline: str | Path,
    data: CanonicalDataset | str | Path,
    recipe: Recipe,
    out_dir: str | Path,
    *,
    threads: int = 2,
    latency_runs: int = 20,
    device: str = "cpu",
    baseline_metrics: dict[str, Any] | None = None,
    seed: int = 0,
    progress: bool = False,
    cache_dir: str | Path | None = None,
    backends: Sequence[str] | None = None,
    references: Mapping[str, Callable[[], object]] | None = None,
    prepared: UNet | None = None,
    teacher_cache: TeacherCache | None = None,
) -> dict[str, Any]:
    """Run ``recipe`` on the ``baseline`` checkpoint; write artifacts into ``out_dir``; return metrics.

    ``baseline_metrics`` reuses an earlier `measure_baseline` result (the sweep measures it once).
    ``cache_dir`` caches the recipe's regularisation phase (`compress.regularize`), so that the
    recipes of one study that share its settings compute it once; None recomputes it.
    ``backends``: where the artifact is timed (default: `compress.deploy.latency_backends` of the
    recipe's runtime). Each backend is timed paired against the baseline's call in
    ``references`` (`compress.runners.reference_calls`; the sweep keeps them open for the whole
    study); without ``references`` they are built here from the baseline. The compressed M
    gains ``paired`` and ``speedup_<backend>`` (the paired ratio baseline / compressed).
    ``teacher_cache``: distillation teacher logits kept across calls on the same baseline
    (`compress.teacher_cache`; the sweep keeps one per worker).
    ``prepared``: a model already pruned and fine-tuned elsewhere (e.g. by another pruner, for
    `studies.bench_peers`), deployed instead of running the recipe's prune + fine-tune stage;
    the recipe's precision, runtime and threshold still apply.
    Only the training split (fine-tune, int8 calibration) and validation split (threshold,
    ``val_dice``) are read.
    """
    data = _as_data(data)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, meta = load_checkpoint(baseline)
    patch_size = meta.get("patch_size")
    spatial = measure_spatial(model, data, meta)
    if backends is None:
        backends = latency_backends(recipe.runtime, device)
    if references is None:
        shape = (1, model.config.in_channels, *spatial)
        references = reference_calls(model, shape, backends, threads=threads)
    if baseline_metrics is None:
        baseline_metrics = measure_baseline(
            baseline, data, threads=threads, latency_runs=latency_runs, device=device
        )

    # prune + fine-tune with the recipe's recovery methods (regularise, gradual, distil)
    if prepared is not None:
        model = prepared.cpu().eval()
    else:
        model = recover(
            baseline, data, recipe, cache_dir=cache_dir, seed=seed, device=device,
            progress=progress, teacher_cache=teacher_cache,
        )  # fmt: skip
    cfg = model.config

    onnx_path = out / "model.onnx" if recipe.runtime == "ort" else None
    artifact = out / artifact_name(recipe.runtime, recipe.precision)
    with tempfile.TemporaryDirectory(prefix="unet-compress-", dir=out) as tmp:
        fp32_onnx = export_onnx(model, Path(tmp) / "fp32.onnx")
        check_parity(
            model,
            fp32_onnx,
            sample_inputs(
                data, "train", 1, cfg.spatial_dims, patch_size, seed, divisor=cfg.divisor
            ),
        )

        def draw(split: str) -> tuple[Any, Any]:  # int8 calibration / accuracy control
            n, dims = recipe.calibration_samples, cfg.spatial_dims
            return sample_pairs(data, split, n, dims, patch_size, seed, divisor=cfg.divisor)

        if recipe.runtime == "openvino":  # the ONNX OpenVINO reads; int8: NNCF's IR
            write_openvino(
                recipe.precision,
                fp32_onnx,
                artifact,
                lambda: draw("train")[0],
                max_drop=recipe.int8_max_drop,
                validation=lambda: draw("val"),
            )
        elif onnx_path is not None and recipe.precision == "int8":
            quantize_int8(fp32_onnx, onnx_path, draw("train")[0], recipe.calibration)
        elif onnx_path is not None:  # the torch runtime's artifact is the checkpoint (below)
            write_float_onnx(recipe.precision, fp32_onnx, onnx_path)

    if artifact.suffix == ".pt" and recipe.precision != "fp32":
        cast_module(model, recipe.precision)
    forward = artifact_forward(
        recipe.runtime, recipe.precision, artifact, model, threads=threads, device=device
    )
    val_result = validate(
        forward,
        model,
        data,
        recipe.threshold,
        meta.get("threshold"),
        patch_size,
        components=recipe.components,
        fixed_post=meta,
        rule=recipe.selection,
        anchor=baseline_metrics,
    )
    threshold, val = val_result.threshold, val_result.val_dice

    checkpoint_path = out / "checkpoint.pt"
    ckpt_meta = {
        **{
            k: v
            for k, v in meta.items()
            if k not in ("metrics", "recipe", "threshold", "min_component", "min_volume")
        },
        "threshold": threshold,
        "min_component": val_result.min_component,
        "min_volume": val_result.min_volume,
        "recipe": recipe.to_dict(),
        "baseline": str(baseline),
        "data_fingerprint": data.fingerprint,
        "precision": recipe.precision,
        "runtime": recipe.runtime,
        "metrics": {"val_dice": val},
    }
    half = recipe.precision in ("fp16", "bf16")
    with warnings.catch_warnings():  # fp16 here is for storage, not for CPU compute
        warnings.simplefilter("ignore", RuntimeWarning)
        stored = cast_module(model, recipe.precision) if half else model
    save_checkpoint(checkpoint_path, stored, ckpt_meta, sparse=recipe.prune == "unstructured")
    # torch CPU latency in the deployed dtype, except fp16: emulated on CPUs (~70x slower), so the
    # fp32 module is timed instead and metrics.json says so
    if recipe.precision == "fp16" and not device.startswith("cuda"):
        model.float()
    compressed = _metrics(
        model.cpu(),
        spatial,
        onnx_path,
        artifact,
        threads,
        latency_runs,
        device,
        backends=backends,
        precision=recipe.precision,
        references=references,
    )
    compressed.update(
        threshold=threshold,
        min_component=val_result.min_component,
        min_volume=val_result.min_volume,
        val_dice=val,
        val_per_subject=val_result.per_subject,
        torch_dtype=str(next(model.parameters()).dtype),
    )
    if recipe.runtime == "openvino":
        from compress.openvino import compile_ir, effective_precision

        compressed["ov_inference_precision"] = effective_precision(
            compile_ir(artifact, recipe.precision, threads=threads)
        )
    model.float()
    result = {
        "baseline": baseline_metrics,
        "compressed": compressed,
        "recipe": recipe.to_dict(),
        "recipe_label": recipe.label,
        "artifact": artifact.name,
        "threshold_mode": recipe.threshold,
        "threshold_curve": (val_result.search or {}).get("curve"),
        "threshold_search": {
            k: v for k, v in (val_result.search or {}).items() if k in ("rule", "anchor", "best")
        },
        "component_curve": (val_result.component_search or {}).get("curve"),
        "volume_curve": (val_result.component_search or {}).get("volume_curve"),
        "paired_val": paired_val(compressed, baseline_metrics),
        "data_fingerprint": data.fingerprint,
    }
    write_text_atomic(out / "recipe.json", json.dumps(recipe.to_dict(), indent=2))
    write_text_atomic(out / "metrics.json", json.dumps(result, indent=2))
    return result
