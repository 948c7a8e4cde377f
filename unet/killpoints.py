"""Named kill points: make a process die with SIGKILL at an exact place in its work, for tests.

A test (or a user checking their own setup) names a point in the environment variable
`KILL_AT_ENV`; the process SIGKILLs itself the n-th time it reaches that point::

    UNET_COMPRESS_KILL_AT=train.step:3 python -m unet.train --data d.h5 --out m.pt --resume
    # dies (exit -9) at the start of its 3rd training step; rerunning the command resumes

Without the variable, `killpoint` is a dictionary look-up and nothing else. Unlike a timer, the
point is reached at the same place of the work however loaded the machine is, so a test that
kills there cannot flake. The points (see `POINTS`):

* ``train.step``: the start of each training step (`unet.train.train`);
* ``quantize.calibrate``: each calibration sample fed to ONNX Runtime (`compress.quantize`);
* ``export.onnx``: after ``torch.onnx.export`` wrote the temporary file, before it is checked
  and renamed (`compress.export.export_onnx`);
* ``report.write``: between ``report.md`` and ``pareto.csv`` (`studies.report.write_report`);
* ``sweep.trial``: each sweep trial after its recipe is recorded, before the compressor runs
  (`studies.sweep_worker.run_trial`).

Spec: ``NAME`` or ``NAME:N`` (die on the N-th hit in this process; default 1). Worker processes
inherit the variable, so each of them dies at its own N-th hit.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

KILL_AT_ENV = "UNET_COMPRESS_KILL_AT"
POINTS = ("train.step", "quantize.calibrate", "export.onnx", "report.write", "sweep.trial")

_hits: Counter[str] = Counter()


def parse_spec(spec: str) -> tuple[str, int]:
    """``"NAME[:N]"`` -> (NAME, N); `ValueError` naming the variable for a bad spec."""
    name, colon, count = spec.strip().partition(":")
    if name not in POINTS:
        raise ValueError(
            f"{KILL_AT_ENV}={spec!r}: unknown kill point {name!r}; known: {', '.join(POINTS)}"
        )
    if not colon:
        return name, 1
    if not count.isdigit() or int(count) < 1:
        raise ValueError(f"{KILL_AT_ENV}={spec!r}: the count after ':' must be an integer >= 1")
    return name, int(count)


def killpoint(name: str) -> None:
    """SIGKILL this process if `KILL_AT_ENV` names ``name`` and this is its N-th hit."""
    spec = os.environ.get(KILL_AT_ENV)
    if not spec:
        return
    target, count = parse_spec(spec)
    if name != target:
        return
    _hits[name] += 1
    if _hits[name] >= count:
        os.kill(os.getpid(), signal.SIGKILL)
