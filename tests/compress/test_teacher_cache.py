"""Teacher logits cached by input batch: the same batch is a hit with the same logits, another
batch a miss, least recently used entries go first, one cache serves one teacher, and a second
distilled fine-tune on the same draws runs the teacher not once and ends with the same weights."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from compress.distill import Distillation
from compress.finetune import finetune
from compress.teacher_cache import TeacherCache, tensor_digest
from unet import zoo


class CountingTeacher(torch.nn.Module):
    """A tiny U-Net whose forward calls are counted (the count survives deepcopy)."""

    def __init__(self, calls: list[int]) -> None:
        super().__init__()
        self.net = zoo.create("unet2d-tiny")
        self.calls = calls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.shape[0])
        return self.net(x)

    def __deepcopy__(self, memo: dict) -> CountingTeacher:
        clone = CountingTeacher(self.calls)
        clone.net = copy.deepcopy(self.net, memo)
        return clone


def test_same_batch_hits_other_batch_misses_and_values_match() -> None:
    torch.manual_seed(0)
    teacher = zoo.create("unet2d-tiny").eval()
    cache = TeacherCache(max_mb=4)
    cache.bind(teacher)
    a, b = torch.randn(2, 4, 16, 16), torch.randn(2, 4, 16, 16)
    first = cache.logits(a, teacher)
    again = cache.logits(a.clone().contiguous(memory_format=torch.channels_last), teacher)
    other = cache.logits(b, teacher)
    assert (cache.hits, cache.misses) == (1, 2)  # same values in another layout: a hit
    assert again is first and torch.equal(first, teacher(a).detach())
    assert torch.equal(other, teacher(b).detach())
    assert cache.size_bytes == 2 * first.nelement() * first.element_size()


def test_least_recently_used_entry_goes_first_at_the_budget() -> None:
    one = torch.zeros(1, 3, 32, 32)  # 12 KiB of logits per entry
    cache = TeacherCache(max_mb=2.5 * one.nelement() * 4 / 2**20)  # room for two entries
    cache.bind(torch.nn.Identity())
    x = [torch.full((1, 3, 32, 32), float(i)) for i in range(3)]
    for i in (0, 1, 0, 2):  # 0 used again after 1: 1 is the least recently used
        cache.logits(x[i], lambda t: t * 2)
    assert cache.size_bytes == 2 * one.nelement() * 4
    cache.logits(x[0], lambda t: t * 2)
    cache.logits(x[1], lambda t: t * 2)
    assert (cache.hits, cache.misses) == (2, 4)  # 0 was kept, 1 was evicted


def test_one_cache_serves_one_teacher() -> None:
    cache = TeacherCache()
    with pytest.raises(RuntimeError, match="bind"):
        cache.logits(torch.zeros(1), lambda t: t)
    torch.manual_seed(0)
    teacher = zoo.create("unet2d-tiny")
    cache.bind(teacher)
    cache.bind(copy.deepcopy(teacher))  # the same weights: fine
    with pytest.raises(ValueError, match="another teacher"):
        cache.bind(zoo.create("unet2d-tiny"))
    with pytest.raises(ValueError, match="max_mb"):
        TeacherCache(max_mb=0)


def test_digest_depends_on_values_shape_and_dtype() -> None:
    x = torch.arange(12.0)
    assert tensor_digest(x) == tensor_digest(x.clone())
    assert tensor_digest(x) != tensor_digest(x.reshape(3, 4))
    assert tensor_digest(x) != tensor_digest(x.double())
    assert tensor_digest(x) != tensor_digest(x + 1e-6)


def test_second_distilled_finetune_reuses_every_teacher_output(blob_data: Path) -> None:
    torch.manual_seed(0)
    calls: list[int] = []
    teacher = CountingTeacher(calls)
    student = zoo.create("unet2d-tiny")
    cache = TeacherCache()

    def tune(cached: bool) -> torch.nn.Module:
        loss = Distillation(teacher, weight=1.0, cache=cache if cached else None)
        return finetune(copy.deepcopy(student), blob_data, 3, batch_size=2, extra_loss=loss, seed=5)

    plain = tune(cached=False)
    assert len(calls) == 3
    first = tune(cached=True)
    assert len(calls) == 6 and cache.misses == 3
    second = tune(cached=True)  # the same seed: the same three batches
    assert len(calls) == 6 and cache.hits == 3
    for a, b, c in zip(plain.parameters(), first.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b) and torch.equal(b, c)
