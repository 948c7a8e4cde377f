"""Kill points: the spec format, and a SIGKILL exactly at the N-th hit (never without the
variable). The end-to-end kills of every command are in tests/studies/test_kill_anywhere.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import unet.killpoints
from unet.killpoints import KILL_AT_ENV, POINTS, killpoint, parse_spec

# unet.killpoints alone (not the unet package, which imports torch): a fast child process
CHILD = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("killpoints", sys.argv[1])
kp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(kp)
for i in range(1, 6):
    kp.killpoint("export.onnx")
    kp.killpoint("train.step")
    print(i, flush=True)
"""


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("train.step", ("train.step", 1)),
        ("train.step:3", ("train.step", 3)),
        (" sweep.trial:12 ", ("sweep.trial", 12)),
    ],
)
def test_parse_spec(spec: str, expected: tuple[str, int]) -> None:
    assert parse_spec(spec) == expected


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("train.stpe", "unknown kill point 'train.stpe'"),
        ("", "unknown kill point ''"),
        ("train.step:0", "integer >= 1"),
        ("train.step:-1", "integer >= 1"),
        ("train.step:two", "integer >= 1"),
        ("train.step:", "integer >= 1"),
    ],
)
def test_parse_spec_rejects_bad_specs_naming_the_variable(spec: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as exc:
        parse_spec(spec)
    assert str(exc.value).startswith(f"{KILL_AT_ENV}=")


@pytest.mark.parametrize(
    ("spec", "printed"), [("train.step", 0), ("train.step:3", 2), ("train.step:5", 4)]
)
def test_process_dies_at_the_nth_hit_of_its_point(spec: str, printed: int) -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, unet.killpoints.__file__],
        env={**os.environ, KILL_AT_ENV: spec},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == -signal.SIGKILL
    assert done.stdout.split() == [str(i) for i in range(1, printed + 1)]


def test_no_variable_or_another_point_never_kills(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KILL_AT_ENV, raising=False)
    for name in POINTS:
        killpoint(name)  # still alive
    monkeypatch.setenv(KILL_AT_ENV, "report.write")
    for name in POINTS:
        if name != "report.write":
            killpoint(name)


def test_every_point_is_hooked_into_its_module() -> None:
    root = Path(unet.killpoints.__file__).parents[1]
    sources = "".join(
        p.read_text() for d in ("unet", "compress", "studies") for p in (root / d).rglob("*.py")
    )
    for name in POINTS:
        assert sources.count(f'killpoint("{name}")') == 1, name
