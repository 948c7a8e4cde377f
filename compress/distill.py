"""Knowledge distillation from the unpruned model during fine-tuning: a soft-target loss on the
per-region probabilities, added to BCE + Dice through `unet.train_loop.fit`'s ``extra_loss``.

For student logits ``z_s``, teacher logits ``z_t`` (three sigmoid regions, WT/TC/ET) and a
temperature ``T``, with ``q = sigmoid(z_t / T)`` and ``p = sigmoid(z_s / T)`` per voxel::

    binary KL(q || p) = q log(q / p) + (1 - q) log((1 - q) / (1 - p))
                      = BCE(p; q) - H(q)          (cross-entropy minus the teacher's entropy)
    loss              = weight * T**2 * mean over voxels and regions of binary KL

Plain ``BCE(student, teacher_prob)`` would not be zero at ``student == teacher`` (it equals the
teacher's entropy); the KL is, and its gradient is the same. ``T**2`` keeps the gradient scale
independent of ``T`` (Hinton et al. 2015). The teacher runs in eval mode under
``torch.no_grad`` once per training batch, so no gradient ever reaches it::

    from compress.distill import Distillation
    from unet.train_loop import fit
    fit(pruned, "runs/phantom.h5", steps=200, extra_loss=Distillation(baseline, weight=1.0))

Within one fine-tune every batch is a new draw (`unet.data.datasets`), so the teacher runs once
per batch. Across fine-tunes the draws repeat (the same seed gives the same batches): a sweep
passes one `compress.teacher_cache.TeacherCache` to every trial's distillation, so each batch's
teacher logits are computed once per worker.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from compress.teacher_cache import TeacherCache


def binary_kl_with_logits(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Mean binary KL(teacher || student) of sigmoid probabilities at ``temperature``, times T².

    Both tensors have the same shape; the result is a float32 scalar, zero (to rounding) where
    the logits are equal. Gradients flow into ``student_logits`` only (the teacher's are
    detached).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"distillation: student {tuple(student_logits.shape)} and teacher "
            f"{tuple(teacher_logits.shape)} logits differ in shape"
        )
    check_temperature(temperature)
    zs = student_logits.float() / temperature
    zt = teacher_logits.detach().float() / temperature
    q = torch.sigmoid(zt)
    cross_entropy = F.binary_cross_entropy_with_logits(zs, q)
    teacher_entropy = F.binary_cross_entropy_with_logits(zt, q)
    return (cross_entropy - teacher_entropy) * temperature**2


def check_temperature(temperature: float) -> float:
    """``temperature`` if it is a finite number > 0, else ``ValueError``."""
    if not (isinstance(temperature, (int, float)) and 0 < temperature < math.inf):
        raise ValueError(f"distillation temperature must be a number > 0, got {temperature!r}")
    return float(temperature)


class Distillation:
    """``extra_loss(image, logits)`` for `unet.train_loop.fit`: ``weight`` x the binary KL
    between a frozen ``teacher`` (a copy is kept, in eval mode, on the logits' device) and
    the student's ``logits`` on the same ``image`` batch. With ``cache``
    (`compress.teacher_cache.TeacherCache`), the teacher's logits of a batch seen before (by
    this or another fine-tune with the same teacher) are reused, not recomputed."""

    def __init__(
        self,
        teacher: nn.Module,
        weight: float = 1.0,
        temperature: float = 1.0,
        cache: TeacherCache | None = None,
    ) -> None:
        if not (isinstance(weight, (int, float)) and 0 <= weight < math.inf):
            raise ValueError(f"distillation weight must be a number >= 0, got {weight!r}")
        self.weight = float(weight)
        self.temperature = check_temperature(temperature)
        self.teacher = copy.deepcopy(teacher).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.cache = cache
        if cache is not None:
            cache.bind(self.teacher)

    @torch.no_grad()
    def teacher_logits(self, image: torch.Tensor) -> torch.Tensor:
        """The teacher's logits for ``image`` (moved to the image's device on first use)."""
        param = next(self.teacher.parameters())
        if param.device != image.device:
            self.teacher.to(image.device)
        return self.teacher(image)

    def __call__(self, image: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if self.weight == 0:
            return logits.new_zeros((), dtype=torch.float32)
        if self.cache is None:
            target = self.teacher_logits(image)
        else:
            target = self.cache.logits(image, self.teacher_logits)
        return self.weight * binary_kl_with_logits(logits, target, self.temperature)
