"""Distillation: the binary KL is zero at student == teacher, its gradient reaches only the
student, and `fit` adds it through ``extra_loss``."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from compress.distill import Distillation, binary_kl_with_logits
from unet import zoo
from unet.train_loop import fit


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_loss_is_zero_at_student_equals_teacher_and_grad_reaches_only_the_student(
    temperature: float,
) -> None:
    torch.manual_seed(0)
    teacher = zoo.create("unet2d-tiny").eval()
    student = copy.deepcopy(teacher)
    image = torch.randn(2, 4, 16, 16)
    distill = Distillation(teacher, weight=1.0, temperature=temperature)

    same = distill(image, student(image))
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    # plain BCE against the teacher's probabilities is not zero there: it is the teacher's entropy
    q = torch.sigmoid(teacher(image) / temperature)
    assert F.binary_cross_entropy(q, q).item() > 0.1

    with torch.no_grad():
        student.head.bias.add_(0.5)
    loss = distill(image, student(image))
    assert loss.item() > 0
    loss.backward()
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    assert student.head.bias.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is None for p in distill.teacher.parameters())


def test_binary_kl_matches_the_closed_form() -> None:
    torch.manual_seed(1)
    zs, zt = torch.randn(3, 3, 5, 5), torch.randn(3, 3, 5, 5)
    for t in (1.0, 3.0):
        p, q = torch.sigmoid(zs / t), torch.sigmoid(zt / t)
        kl = q * torch.log(q / p) + (1 - q) * torch.log((1 - q) / (1 - p))
        assert binary_kl_with_logits(zs, zt, t).item() == pytest.approx(
            (kl.mean() * t**2).item(), rel=1e-5
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weight": -1.0}, "weight"),
        ({"weight": float("inf")}, "weight"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": "2"}, "temperature"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Distillation(zoo.create("unet2d-tiny"), **kwargs)


def test_shape_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        binary_kl_with_logits(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 8, 8))


def test_fit_adds_the_extra_loss_every_step(blob_data: Path) -> None:
    calls: list[tuple[tuple[int, ...], tuple[int, ...], bool]] = []
    teacher = zoo.create("unet2d-tiny")
    distill = Distillation(teacher, weight=1.0)

    def spy(image: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        calls.append((tuple(image.shape), tuple(logits.shape), logits.requires_grad))
        return distill(image, logits)

    before = [p.detach().clone() for p in teacher.parameters()]
    fit(zoo.create("unet2d-tiny"), blob_data, steps=2, batch_size=2, extra_loss=spy)
    assert calls == [((2, 4, 32, 32), (2, 3, 32, 32), True)] * 2
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters(), strict=True))
