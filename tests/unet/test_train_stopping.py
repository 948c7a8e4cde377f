"""Early stopping on a val plateau (rule recorded in the checkpoints) and ``--amp auto``
(including its fp32 fallback where CPU bf16 3D convolution is wrong)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import unet.train
from unet.amp import bf16_conv3d_hazard, cpu_flags, resolve_amp
from unet.checkpoint import read_checkpoint
from unet.train import TrainConfig, TrainConfigError, train


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fake_validation(monkeypatch: pytest.MonkeyPatch, curve: list[float]) -> list[int]:
    """Replace the val evaluation by a constructed curve of mean Dice (one value per call)."""
    calls: list[int] = []

    def fake(model, data, *, tuned: bool, **kwargs: Any) -> dict[str, Any]:
        value = curve[min(len(calls), len(curve) - 1)]
        calls.append(len(calls))
        dice = {"WT": value, "TC": value, "ET": value, "mean": value}
        at_half = {r: v - 0.1 for r, v in dice.items()}  # the monitor is the tuned value
        threshold = {"WT": 0.7, "TC": 0.5, "ET": 0.5}
        return {
            "dice": at_half,
            **({"tuned": {"dice": dice, "threshold": threshold}} if tuned else {}),
        }

    monkeypatch.setattr(unet.train, "validation_scores", fake)
    return calls


def config(data: Path, out: Path, **overrides: Any) -> TrainConfig:
    options = {
        "model": "unet2d-tiny",
        "steps": 40,
        "batch_size": 2,
        "val_every": 4,
        "log_every": 4,
        "amp": "off",
        "progress": False,
    }
    return TrainConfig(data=str(data), out=str(out), **{**options, **overrides})


@pytest.mark.parametrize(
    ("curve", "patience", "min_delta", "stop_step", "best_step", "reason"),
    [
        # rises to 0.8 at the 3rd validation (step 12), then flat: 2 flat validations -> step 20
        ([0.5, 0.7, 0.8, 0.8, 0.8, 0.8, 0.8], 2, 0.0, 20, 12, "plateau"),
        # gains of 0.001 after step 12 are below min_delta 0.01: still a plateau at step 24
        ([0.5, 0.7, 0.8, 0.801, 0.802, 0.803, 0.804], 3, 0.01, 24, 12, "plateau"),
        # ... but count as improvements with min_delta 0: the run reaches its cap
        ([0.5, 0.6, 0.7, 0.71, 0.72, 0.73, 0.74, 0.75, 0.76, 0.77], 2, 0.0, 40, 40, "step cap"),
    ],
)
def test_early_stopping_stops_on_a_constructed_plateau(
    monkeypatch: pytest.MonkeyPatch,
    blob_data: Path,
    tmp_path: Path,
    curve: list[float],
    patience: int,
    min_delta: float,
    stop_step: int,
    best_step: int,
    reason: str,
) -> None:
    calls = fake_validation(monkeypatch, curve)
    out = tmp_path / "run.pt"
    summary = train(config(blob_data, out, patience=patience, min_delta=min_delta))
    assert summary["steps"] == stop_step
    assert len(calls) == stop_step // 4
    assert summary["best_step"] == best_step
    for path in (out, out.with_name("run.last.pt")):
        stopping = read_checkpoint(path)["meta"]["stopping"]
        assert stopping["reason"] == reason
        assert stopping["stopped_at_step"] == stop_step
        assert stopping["patience"] == patience and stopping["min_delta"] == min_delta
        assert stopping["max_steps"] == 40 and stopping["val_every"] == 4
        assert "val mean Dice" in stopping["monitor"]
    assert read_checkpoint(out)["meta"]["step"] == best_step
    log = [json.loads(line) for line in out.with_name("run.jsonl").read_text().splitlines()]
    assert log[0]["kind"] == "setup" and log[0]["patience"] == patience
    assert log[-1] == {
        "kind": "stop",
        "step": stop_step,
        "stopped_at_step": stop_step,
        "reason": reason,
    }


def test_a_stopped_run_resumes_as_a_no_op(
    monkeypatch: pytest.MonkeyPatch, blob_data: Path, tmp_path: Path
) -> None:
    fake_validation(monkeypatch, [0.5, 0.8, 0.8, 0.8])
    out = tmp_path / "run.pt"
    first = train(config(blob_data, out, patience=2))
    assert first["steps"] == 16
    before = out.with_name("run.last.pt").read_bytes()
    again = train(config(blob_data, out, patience=2, resume=True))
    assert again["steps"] == 16 and again["stopping"]["reason"] == "plateau"
    assert out.with_name("run.last.pt").read_bytes() == before


def test_without_patience_the_run_is_fixed_length(
    monkeypatch: pytest.MonkeyPatch, blob_data: Path, tmp_path: Path
) -> None:
    fake_validation(monkeypatch, [0.5, 0.5, 0.5])
    summary = train(config(blob_data, tmp_path / "run.pt", steps=12))
    assert summary["steps"] == 12
    assert summary["stopping"]["reason"] == "step cap"
    assert summary["stopping"]["rule"] == "fixed length: 12 steps"


@pytest.mark.parametrize(("monitor", "best_step"), [("tuned", 8), ("fixed", 12)])
def test_best_checkpoint_follows_the_monitor(
    monkeypatch: pytest.MonkeyPatch, blob_data: Path, tmp_path: Path, monitor: str, best_step: int
) -> None:
    """The tuned and the 0.5-threshold val Dice disagree on the best step: each monitor picks
    its own, and says which it follows."""
    tuned_curve = iter([0.5, 0.8, 0.7, 0.7])
    fixed_curve = iter([0.6, 0.5, 0.9, 0.5])

    def fake(model, data, *, tuned: bool, **kwargs: Any) -> dict[str, Any]:
        t, f = next(tuned_curve), next(fixed_curve)
        at = {"WT": f, "TC": f, "ET": f, "mean": f}
        if not tuned:
            return {"dice": at}
        best = {"WT": t, "TC": t, "ET": t, "mean": t}
        return {"dice": at, "tuned": {"dice": best, "threshold": dict.fromkeys(best, 0.6)}}

    monkeypatch.setattr(unet.train, "validation_scores", fake)
    out = tmp_path / "run.pt"
    summary = train(config(blob_data, out, steps=16, monitor=monitor))
    assert summary["best_step"] == best_step
    meta = read_checkpoint(out)["meta"]
    assert meta["step"] == best_step
    text = meta["stopping"]["monitor"]
    assert ("searched" in text) == (monitor == "tuned") and ("0.5" in text) == (monitor == "fixed")
    log = [json.loads(line) for line in out.with_name("run.jsonl").read_text().splitlines()]
    vals = [r for r in log if r["kind"] == "val"]
    assert ("tuned" in vals[0]) == (monitor == "tuned")
    assert [r["monitored"] for r in vals] == (
        [0.5, 0.8, 0.7, 0.7] if monitor == "tuned" else [0.6, 0.5, 0.9, 0.5]
    )


def test_tuned_validation_is_never_below_threshold_half(blob_data: Path) -> None:
    """Real scores of a briefly trained model: the searched per-region thresholds include 0.5
    on their grid, so the monitored (tuned) val Dice is >= the one at 0.5, per region too."""
    from unet import zoo
    from unet.data.canonical import CanonicalDataset
    from unet.train_loop import fit
    from unet.train_monitor import validation_scores

    torch.manual_seed(0)
    data = CanonicalDataset(blob_data)
    model = fit(zoo.create("unet2d-tiny"), data, steps=15, batch_size=8).train()
    scores = validation_scores(model, data, patch_size=None, device="cpu", tuned=True)
    assert model.training  # left in the mode it was in
    for region in ("WT", "TC", "ET", "mean"):
        assert scores["tuned"]["dice"][region] >= scores["dice"][region] - 1e-9
    assert all(0.0 < t < 1.0 for t in scores["tuned"]["threshold"].values())
    assert "tuned" not in validation_scores(model, data, patch_size=None, device="cpu", tuned=False)


@pytest.mark.parametrize(
    ("overrides", "field", "match"),
    [
        ({"monitor": "loss"}, "monitor", "one of tuned, fixed"),
        ({"patience": 0}, "patience", ">= 1 validations"),
        ({"min_delta": -0.1}, "min_delta", r"\[0, 1\)"),
        ({"min_delta": float("nan")}, "min_delta", r"\[0, 1\)"),
    ],
)
def test_bad_stopping_options(
    tmp_path: Path, overrides: dict[str, Any], field: str, match: str
) -> None:
    with pytest.raises(TrainConfigError, match=match) as info:
        TrainConfig(data="d.h5", out=str(tmp_path / "x.pt"), **overrides).resolved()
    assert info.value.field == field


# ------------------------------------------------------------------ --amp auto


@pytest.mark.parametrize(
    ("amp", "flags", "expected"),
    [
        ("auto", {"avx512f", "avx512_bf16", "avx512_vnni"}, "bf16"),  # Zen 4/5, Cooper Lake+
        ("auto", {"avx2", "amx_bf16", "amx_tile"}, "bf16"),  # Sapphire Rapids AMX
        ("auto", {"avx512f", "avx512_vnni"}, "off"),  # AVX-512 without bf16 (Ice Lake)
        ("auto", {"avx2", "fma"}, "off"),  # Zen 3 / Haswell
        ("auto", set(), "off"),  # unknown CPU
        ("off", {"avx512_bf16"}, "off"),  # explicit modes resolve to themselves
        ("bf16", set(), "bf16"),
    ],
)
def test_amp_auto_chooses_bf16_only_where_native(amp: str, flags: set, expected: str) -> None:
    mode, reason = resolve_amp(amp, torch.device("cpu"), frozenset(flags))
    assert mode == expected
    assert reason


def test_amp_auto_on_cuda_prefers_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_amp("auto", torch.device("cuda"))[0] == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_amp("auto", torch.device("cuda"))[0] == "fp16"


def test_cpu_flags_parses_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16\n\nprocessor\t: 1\n")
    assert cpu_flags(info) == {"fpu", "sse", "avx512f", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_train_records_the_amp_choice(
    monkeypatch: pytest.MonkeyPatch, blob_data: Path, tmp_path: Path
) -> None:
    monkeypatch.setattr("unet.train_loop.resolve_amp", lambda amp, dev: ("off", "faked: no bf16"))
    fake_validation(monkeypatch, [0.5])
    out = tmp_path / "run.pt"
    summary = train(config(blob_data, out, steps=4, amp="auto"))
    assert summary["amp"] == {"requested": "auto", "used": "off", "reason": "faked: no bf16"}
    assert read_checkpoint(out)["meta"]["amp"]["used"] == "off"
    assert TrainConfig(data="d", out="x.pt").amp == "auto"


@pytest.mark.parametrize(
    ("patch_depth", "divisor", "level"),
    [
        (8, 4, 2),  # unet3d-tiny (3 levels): depths 8, 4, 2
        (4, 4, 1),  # 4, 2, 1
        (16, 4, None),  # 16, 8, 4
        (12, 4, None),  # 12, 6, 3
        (16, 8, 3),  # unet3d-small (4 levels): 16, 8, 4, 2
        (64, 8, None),  # the default 3D patch: 64 .. 8
        (32, 16, 4),  # a 5-level U-Net on 32^3 patches: 32 .. 2
        (2, 1, 0),  # no pooling at all, a 2-deep input
    ],
)
def test_bf16_conv3d_hazard_names_the_level_that_is_2_deep(
    patch_depth: int, divisor: int, level: int | None
) -> None:
    hazard = bf16_conv3d_hazard(patch_depth, divisor)
    if level is None:
        assert hazard is None
    else:
        assert hazard is not None and f"halves to 2 at level {level}," in hazard


def _bf16_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend this CPU computes bf16 natively (``auto`` resolves to bf16)."""
    monkeypatch.setattr(
        "unet.train_loop.resolve_amp",
        lambda amp, dev: (amp, "requested") if amp != "auto" else ("bf16", "faked: native bf16"),
    )


@pytest.mark.parametrize(("depth", "used"), [(8, "off"), (16, "bf16")])
def test_auto_amp_trains_3d_in_fp32_where_bf16_conv3d_is_wrong(
    monkeypatch: pytest.MonkeyPatch, blob_data: Path, tmp_path: Path, depth: int, used: str
) -> None:
    _bf16_cpu(monkeypatch)
    fake_validation(monkeypatch, [0.5])
    out = tmp_path / "run.pt"
    cfg = config(
        blob_data,
        out,
        model="unet3d-tiny",
        steps=1,
        batch_size=1,
        amp="auto",
        patch_size=(depth, 16, 16),
    )
    summary = train(cfg)
    assert summary["amp"]["used"] == used
    if used == "off":
        assert "halves to 2 at level 2" in summary["amp"]["reason"]
        assert summary["amp"]["reason"].endswith(": fp32")


def test_explicit_bf16_is_refused_where_bf16_conv3d_is_wrong(
    blob_data: Path, tmp_path: Path
) -> None:
    with pytest.raises(TrainConfigError, match=r"^amp: bf16 on the CPU: patch depth 8 halves to 2"):
        config(
            blob_data, tmp_path / "x.pt", model="unet3d-tiny", amp="bf16", patch_size=(8, 16, 16)
        ).resolved()
    config(
        blob_data, tmp_path / "x.pt", model="unet3d-tiny", amp="bf16", patch_size=(16, 16, 16)
    ).resolved()
