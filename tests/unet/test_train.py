"""Training: config validation, fit(), checkpoints and log of train(), exact resume after
SIGKILL, and a short run that learns."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from unet import zoo
from unet.checkpoint import CheckpointError, load_checkpoint, read_checkpoint
from unet.data.canonical import CanonicalDataset, CanonicalWriter
from unet.evaluate import evaluate_model
from unet.phantom import PhantomConfig, write_phantom
from unet.train import TrainConfig, TrainConfigError, main, run_paths, train
from unet.train_loop import fit, rng_state, set_rng_state, warmup_cosine

SHAPE = (8, 32, 32)


def write_blobs(path: Path, n: int = 8, shape=SHAPE, seed: int = 0) -> CanonicalDataset:
    """Learnable synthetic subjects: 1-2 nested tumour balls (oedema 2 > rim 4 > core 1) per
    subject, each region with its own contrast (FLAIR-bright WT, T1ce-bright rim, T2-dark core,
    T1-bright core), on noise; one subject in four is tumour-free."""
    rng = np.random.default_rng(seed)
    d, h, w = shape
    zz, yy, xx = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    with CanonicalWriter(path, source="test-blobs") as writer:
        for i in range(n):
            image = rng.normal(5.0, 1.0, (4, *shape)).astype(np.float32)
            label = np.zeros(shape, np.uint8)
            for _ in range(0 if i % 4 == 3 else int(rng.integers(1, 3))):
                c = rng.uniform((0, 0, 0), shape)
                r = rng.uniform(0.2, 0.3) * min(h, w)
                dist = np.sqrt(((zz - c[0]) * h / d / 2) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2)
                label[dist < r] = 2
                label[dist < 0.65 * r] = 4
                label[dist < 0.35 * r] = 1
            image[0][label > 0] += 2.5
            image[2][label == 4] += 2.5
            image[3][label == 1] -= 2.5
            image[1][(label == 1) | (label == 4)] += 1.5
            writer.add(f"s{i:03d}", image, label)
    return CanonicalDataset(path)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and one thread stays fast when other
    processes share the cores (OpenMP threads then stall each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def blobs(tmp_path_factory) -> CanonicalDataset:
    return write_blobs(tmp_path_factory.mktemp("blobs") / "blobs.h5")


def tiny_config(data: CanonicalDataset, out: Path, **overrides) -> TrainConfig:
    options = {
        "model": "unet2d-tiny",
        "steps": 12,
        "batch_size": 4,
        "val_every": 5,
        "log_every": 2,
        "progress": False,
    }
    options.update(overrides)
    return TrainConfig(data=str(data.path), out=str(out), **options)


# ------------------------------------------------------------------ config validation


@pytest.mark.parametrize(
    "overrides, field, match",
    [
        ({"model": "unet9d"}, "model", "unknown model"),
        ({"steps": 0}, "steps", ">= 1 for a training run"),
        ({"batch_size": 0}, "batch_size", ">= 1"),
        ({"lr": 0.0}, "lr", "positive"),
        ({"lr": float("nan")}, "lr", "positive"),
        ({"weight_decay": -1e-4}, "weight_decay", ">= 0"),
        ({"warmup_fraction": 1.0}, "warmup_fraction", r"\[0, 1\)"),
        ({"amp": "fp8"}, "amp", "one of auto, off, bf16, fp16"),
        ({"amp": "fp16"}, "amp", "CUDA"),
        ({"device": "tpu"}, "device", "device"),
        ({"tumour_fraction": 1.5}, "tumour_fraction", r"\[0, 1\]"),
        ({"bce_weight": 0.0, "dice_weight": 0.0}, "dice_weight", "both 0"),
        ({"num_workers": -1}, "num_workers", ">= 0"),
        ({"val_every": 0}, "val_every", ">= 1"),
        ({"log_every": 0}, "log_every", ">= 1"),
        ({"patch_size": (16, 16, 16)}, "patch_size", "2 positive ints \\(H W\\) for a 2D"),
        ({"patch_size": (16, 12)}, "patch_size", "divisible by"),
        ({"model": "unet3d-tiny", "patch_size": (16, 18, 16)}, "patch_size", "divisible by"),
        ({"model": "unet3d-tiny", "patch_size": (16, 16)}, "patch_size", "3 positive ints"),
        ({"out": "run.ckpt"}, "out", ".pt"),
    ],
)
def test_bad_config_is_refused_naming_the_field(tmp_path, overrides, field, match):
    options = {"data": "d.h5", "out": str(tmp_path / "run.pt"), **overrides}
    with pytest.raises(TrainConfigError, match=match) as info:
        TrainConfig(**options).resolved()
    assert info.value.field == field


def test_resolved_fills_per_dims_defaults():
    two = TrainConfig(data="d.h5", out="x.pt").resolved()
    three = TrainConfig(data="d.h5", out="x.pt", model="unet3d-small").resolved()
    assert two.patch_size is None and three.patch_size == (64, 64, 64)
    assert None not in (two.steps, two.batch_size, two.val_every, three.steps, three.batch_size)
    assert TrainConfig(data="d.h5", out="x.pt", steps=7).resolved().steps == 7
    assert TrainConfig.from_dict(three.to_dict()) == three


def test_cli_bad_value_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["--data", "d.h5", "--out", str(tmp_path / "x.pt"), "--lr", "-1"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "error: argument --lr: must be a positive number" in err and "Traceback" not in err


def test_cli_missing_data_file_names_it(tmp_path, capsys):
    missing = tmp_path / "nope.h5"
    with pytest.raises(SystemExit) as info:
        main(["--data", str(missing), "--out", str(tmp_path / "x.pt"), "--no-progress"])
    assert info.value.code == 2
    assert f"{missing}: no such data file" in capsys.readouterr().err


def test_cli_fp16_on_cpu_is_refused_with_the_reason(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--data", "d.h5", "--out", str(tmp_path / "x.pt"), "--amp", "fp16"])
    assert "argument --amp: fp16 autocast needs a CUDA device" in capsys.readouterr().err


# ------------------------------------------------------------------ pieces


def test_warmup_cosine_schedule():
    factors = [warmup_cosine(s, total=100, warmup=10) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0) and factors[55] == pytest.approx(0.5)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))
    assert factors[-1] < 0.001


def test_rng_state_round_trip():
    state = rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    torch.manual_seed(123)
    np.random.seed(123)  # noqa: NPY002
    random.seed(123)
    set_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    assert torch.equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert first[2] == again[2]


# ------------------------------------------------------------------ fit


def test_fit_zero_steps_returns_the_model_untouched(blobs):
    model = zoo.create("unet2d-tiny").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert fit(model, blobs, steps=0) is model
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fit_calls_after_step_every_step_and_masks_stay_applied(blobs):
    """after_step re-applies a pruning-like mask: the masked weights end at exactly zero."""
    torch.manual_seed(0)
    model = zoo.create("unet2d-tiny")
    weight = model.encoders[0].convs[0][0].weight
    mask = torch.rand_like(weight) > 0.5
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []

    def reapply(m):
        calls.append(1)
        with torch.no_grad():
            m.encoders[0].convs[0][0].weight.mul_(mask)

    out = fit(model, blobs, steps=4, batch_size=2, after_step=reapply)
    assert out is model and not model.training and len(calls) == 4
    assert torch.all(weight[~mask] == 0) and weight.is_contiguous()
    changed = [k for k, v in model.state_dict().items() if not torch.equal(before[k], v)]
    assert "head.weight" in changed and "decoders.0.convs.1.0.weight" in changed


def test_fit_and_finetune_batch_follows_the_dimensionality(blobs, monkeypatch):
    """Without a batch size, a fine-tune uses the model's training batch: 16 slices in 2D, 2
    patches of 64^3 in 3D (not 16 patches: 8x the training cost per step)."""
    from compress.finetune import finetune
    from unet import train_loop

    seen = []

    class Spy(train_loop.TrainLoop):
        def __init__(self, *args, **kwargs):
            seen.append(kwargs["batch_size"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(train_loop, "TrainLoop", Spy)
    fit(zoo.create("unet2d-tiny"), blobs, steps=1)
    fit(zoo.create("unet3d-tiny"), blobs, steps=1, patch_size=(8, 16, 16))
    finetune(zoo.create("unet3d-tiny"), blobs, 1, patch_size=(8, 16, 16))
    fit(zoo.create("unet3d-tiny"), blobs, steps=1, batch_size=3, patch_size=(8, 16, 16))
    assert seen == [16, 2, 2, 3]


@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_fit_3d_patches(blobs, amp):
    torch.manual_seed(0)
    model = zoo.create("unet3d-tiny")
    before = model.head.weight.clone()
    # depth 16: at depth 8 one level of unet3d-tiny is 2 deep, which refuses bf16 on the CPU
    fit(model, blobs, steps=2, batch_size=2, patch_size=(16, 16, 16), amp=amp)
    assert not torch.equal(before, model.head.weight)
    assert torch.isfinite(model.head.weight).all()


def test_fit_refuses_bad_options(blobs):
    with pytest.raises(TrainConfigError, match="steps: must be >= 0"):
        fit(zoo.create("unet2d-tiny"), blobs, steps=-1)
    with pytest.raises(TrainConfigError, match="patch_size"):
        fit(zoo.create("unet3d-tiny"), blobs, steps=1, patch_size=(6, 16, 16))
    with pytest.raises(TrainConfigError, match="CUDA"):
        fit(zoo.create("unet2d-tiny"), blobs, steps=1, amp="fp16")


# ------------------------------------------------------------------ train


def test_train_writes_checkpoints_and_log(blobs, tmp_path):
    cfg = tiny_config(blobs, tmp_path / "run.pt")
    summary = train(cfg)
    paths = run_paths(cfg.out)
    assert summary["steps"] == 12 and summary["out"] == str(paths["best"])
    # last checkpoint: weights_only-loadable, with the full train state
    last = read_checkpoint(paths["last"])
    state = last["train_state"]
    assert state["step"] == 12 and state["next_draw"] == 12 * 4
    assert {"optimizer", "scheduler", "scaler", "rng", "best", "elapsed_s"} <= set(state)
    meta = last["meta"]
    assert meta["model"] == "unet2d-tiny" and meta["data_fingerprint"] == blobs.fingerprint
    assert meta["train_config"]["steps"] == 12 and meta["threshold"] == {
        "WT": 0.5,
        "TC": 0.5,
        "ET": 0.5,
    }
    # best checkpoint: the step with the best val mean Dice, loadable as a model
    model, best_meta = load_checkpoint(paths["best"])
    records = [json.loads(line) for line in paths["log"].read_text().splitlines()]
    vals = [r for r in records if r["kind"] == "val"]
    assert [r["step"] for r in vals] == [5, 10, 12]
    best = max(vals, key=lambda r: r["monitored"])  # the first of equals, like the run
    assert all(r["monitored"] == r["tuned"]["dice"]["mean"] for r in vals)  # default: tuned
    assert best_meta["best_step"] == best["step"] == summary["best_step"]
    assert best_meta["metrics"]["val"]["dice"] == pytest.approx(best["dice"])
    assert [r["step"] for r in records if r["kind"] == "train"] == [2, 4, 6, 8, 10, 12]
    assert all(np.isfinite(r["loss"]) and r["samples_per_s"] > 0 for r in records if "loss" in r)
    # the best model really has the logged val Dice
    again = evaluate_model(model, blobs, "val", hd95=False)["mean"]["dice"]["mean"]
    assert again == pytest.approx(best["dice"]["mean"], abs=1e-6)


@pytest.mark.parametrize("progress", [True, False])
def test_output_not_a_terminal_gets_one_line_per_validation(blobs, tmp_path, capsys, progress):
    train(tiny_config(blobs, tmp_path / "run.pt", progress=progress))
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "val mean Dice" in ln]
    assert "\r" not in err  # no progress bar when stderr is captured (not a terminal)
    if not progress:
        assert lines == []
        return
    records = [
        json.loads(ln) for ln in run_paths(tmp_path / "run.pt")["log"].read_text().splitlines()
    ]
    vals = [r for r in records if r["kind"] == "val"]
    assert [ln.split(":")[0] for ln in lines] == [f"unet2d-tiny step {s}/12" for s in (5, 10, 12)]
    for line, val in zip(lines, vals, strict=True):
        assert f"val mean Dice {val['monitored']:.4f}" in line and "searched thresholds" in line
        assert ("best so far" in line) == val["best"]


def test_existing_run_needs_resume_and_same_options(blobs, tmp_path):
    cfg = tiny_config(blobs, tmp_path / "run.pt", steps=4, val_every=2)
    train(cfg)
    with pytest.raises(TrainConfigError, match="exists: pass --resume"):
        train(cfg)
    with pytest.raises(TrainConfigError, match=r"--lr 0\.01 \(run has 0\.002\)"):
        train(tiny_config(blobs, tmp_path / "run.pt", steps=4, val_every=2, lr=0.01, resume=True))


def test_resume_refuses_other_data_and_non_training_checkpoints(blobs, tmp_path):
    cfg = tiny_config(blobs, tmp_path / "run.pt", steps=2, val_every=2)
    train(cfg)
    other = write_blobs(tmp_path / "other.h5", seed=1)
    with pytest.raises(TrainConfigError, match="other data than .*other.h5"):
        train(dataclasses.replace(cfg, data=str(other.path), resume=True))
    paths = run_paths(cfg.out)
    paths["best"].replace(paths["last"])  # a model checkpoint has no train state
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        train(dataclasses.replace(cfg, resume=True))


def test_resuming_a_finished_run_is_a_no_op(blobs, tmp_path):
    cfg = tiny_config(blobs, tmp_path / "run.pt", steps=4, val_every=2)
    train(cfg)
    paths = run_paths(cfg.out)
    before = {k: p.read_bytes() for k, p in paths.items()}
    summary = train(dataclasses.replace(cfg, resume=True))
    assert summary["steps"] == 4 and summary["resumed_from_step"] == 4
    assert {k: p.read_bytes() for k, p in paths.items()} == before


def test_train_2d_on_crops_validates_on_whole_slices(blobs, tmp_path, monkeypatch):
    """``patch_size`` (H, W) in 2D: every training batch is crops, validation sees whole
    slices, and the crop size is recorded (fine-tunes of the checkpoint reuse it)."""
    from unet import train_loop

    shapes = []
    step = train_loop.TrainLoop.train_step

    def spy(self):
        shapes.append(tuple(self.dataset[self.step][0].shape))
        return step(self)

    monkeypatch.setattr(train_loop.TrainLoop, "train_step", spy)
    summary = train(tiny_config(blobs, tmp_path / "c.pt", steps=2, val_every=2, patch_size=(16, 8)))
    _, meta = load_checkpoint(summary["out"])
    assert meta["patch_size"] == [16, 8] and meta["train_config"]["patch_size"] == [16, 8]
    assert shapes and all(s == (4, 16, 8) for s in shapes)
    assert summary["best_val"]["dice"]["mean"] >= 0.0


def test_train_3d_validates_with_sliding_windows(blobs, tmp_path):
    cfg = tiny_config(
        blobs,
        tmp_path / "r3.pt",
        model="unet3d-tiny",
        steps=2,
        val_every=2,
        batch_size=1,
        patch_size=(8, 16, 16),
    )
    summary = train(cfg)
    _, meta = load_checkpoint(summary["out"])
    assert meta["patch_size"] == [8, 16, 16] and meta["train_config"]["model"] == "unet3d-tiny"
    assert 0.0 <= summary["best_val"]["dice"]["mean"] <= 1.0


@pytest.mark.slow
def test_short_run_on_a_tiny_phantom_learns_well_above_chance(tmp_path):
    data = tmp_path / "phantom.h5"
    write_phantom(data, PhantomConfig(subjects=10, shape=(16, 64, 64)))
    torch.manual_seed(0)
    untrained = evaluate_model(zoo.create("unet2d-tiny"), data, "val", hd95=False)["mean"]["dice"]
    cfg = TrainConfig(
        data=str(data),
        out=str(tmp_path / "learn.pt"),
        model="unet2d-tiny",
        steps=300,
        batch_size=8,
        lr=5e-3,
        val_every=100,
        progress=False,
    )
    # measured: WT 0.89, TC 0.35, ET 0.22, mean 0.49 (untrained: WT 0, TC 0, ET 0.5, mean 0.17)
    trained = train(cfg)["best_val"]["dice"]
    assert untrained["WT"] < 0.1 and trained["WT"] > 0.75
    assert trained["mean"] > untrained["mean"] + 0.2


# ------------------------------------------------------------------ kill and resume


KILL_RUN = "--model unet2d-tiny --steps 60 --batch-size 4 --val-every 10 --log-every 1"


def _cli(data: CanonicalDataset, out: Path, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "unet.train", "--data", str(data.path), "--out", str(out)]
    return [*cmd, *KILL_RUN.split(), "--no-progress", *extra]


def _log(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines()]
    except FileNotFoundError:
        return []


def _without_timings(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("samples_per_s", "val_s")} for r in records]


@pytest.mark.slow
def test_sigkill_between_checkpoints_then_resume_is_exact(blobs, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two runs at once: one thread each
    reference = subprocess.Popen(
        _cli(blobs, tmp_path / "ref.pt"), env=env, stdout=subprocess.PIPE, text=True
    )
    victim_out = tmp_path / "victim.pt"
    paths = run_paths(victim_out)
    victim = subprocess.Popen(_cli(blobs, victim_out), env=env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    killed_at = None
    while time.monotonic() < deadline and victim.poll() is None:
        records = _log(paths["log"])
        vals = [r["step"] for r in records if r["kind"] == "val"]
        # kill after the first checkpoint, a few steps into the next interval
        if vals and records[-1]["step"] >= vals[-1] + 3:
            victim.send_signal(signal.SIGKILL)
            killed_at = records[-1]["step"]
            break
        time.sleep(0.005)
    assert victim.wait(timeout=60) == -signal.SIGKILL, "the run finished before it was killed"
    assert killed_at is not None and killed_at < 60
    # the last checkpoint survived the kill, is loadable, and is behind the killed step
    saved = read_checkpoint(paths["last"])
    saved_step = saved["train_state"]["step"]
    assert saved_step % 10 == 0 and 10 <= saved_step < _log(paths["log"])[-1]["step"]
    load_checkpoint(paths["best"])

    resumed = subprocess.run(
        _cli(blobs, victim_out, "--resume"), env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["steps"] == 60 and summary["resumed_from_step"] == saved_step
    ref_out, _ = reference.communicate(timeout=300)
    assert reference.returncode == 0

    # exact resume: final weights, optimizer state, best model and log equal the uninterrupted run
    mine, theirs = (
        read_checkpoint(paths["last"]),
        read_checkpoint(run_paths(tmp_path / "ref.pt")["last"]),
    )
    for key, value in theirs["state_dict"].items():
        assert torch.equal(mine["state_dict"][key], value), key
    assert mine["train_state"]["step"] == 60
    for k, v in theirs["train_state"]["optimizer"]["state"].items():
        assert torch.equal(mine["train_state"]["optimizer"]["state"][k]["exp_avg"], v["exp_avg"])
    best_mine, best_ref = read_checkpoint(paths["best"]), read_checkpoint(tmp_path / "ref.pt")
    assert best_mine["meta"]["best_step"] == best_ref["meta"]["best_step"]
    for key, value in best_ref["state_dict"].items():
        assert torch.equal(best_mine["state_dict"][key], value), key
    assert _without_timings(_log(paths["log"])) == _without_timings(
        _log(run_paths(tmp_path / "ref.pt")["log"])
    )
    assert json.loads(ref_out)["best_step"] == summary["best_step"]


def test_architecture_from_a_pruned_checkpoint_trains_from_fresh_weights(blobs, tmp_path):
    """``architecture``: the pruned widths are trained, the pruned weights are not reused."""
    from compress.prune import prune_structured
    from unet.checkpoint import save_checkpoint

    torch.manual_seed(1)
    pruned = prune_structured(zoo.create("unet2d-tiny"), 0.5, round_to=1)
    assert pruned.config != zoo.config("unet2d-tiny")
    arch = save_checkpoint(tmp_path / "pruned.pt", pruned, {"threshold": 0.5})
    cfg = tiny_config(blobs, tmp_path / "run.pt", steps=2, val_every=2, architecture=str(arch))
    train(cfg)
    model, meta = load_checkpoint(tmp_path / "run.pt")
    assert model.config == pruned.config
    assert meta["train_config"]["architecture"] == str(arch)
    # fresh weights: the first conv differs from the pruned model's beyond two AdamW steps
    first = next(n for n, p in model.named_parameters() if p.ndim == 4)
    moved = (model.state_dict()[first] - pruned.state_dict()[first]).abs().max()
    assert moved > 0.05


def test_cli_bad_architecture_names_the_argument(blobs, tmp_path, capsys):
    missing = tmp_path / "nope.pt"
    argv = ["--data", str(blobs.path), "--out", str(tmp_path / "r.pt"), "--steps", "2"]
    with pytest.raises(SystemExit):
        main([*argv, "--architecture", str(missing)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("python -m unet.train: error: argument --architecture:")
    assert "no such checkpoint file" in err
