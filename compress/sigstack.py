"""Keep the calling thread's signal stack across OpenVINO calls (a work-around, Linux only).

    from compress.sigstack import keep_signal_stack
    with keep_signal_stack():
        compiled = ov.Core().compile_model(model, "CPU")   # may replace this thread's stack

OpenVINO's CPU plugin (``SigAltStackSetup`` in ``intel_cpu/src/sigstack_manager.cpp``, checked
with openvino 2026.x) gives the thread that creates it, i.e. the first ``compile_model`` of each
``ov.Core``, a new ``sigaltstack`` and remembers the old one; its destructor munmaps its stack
and, if that stack is still the current one, puts the remembered one back. Two Cores destroyed
in creation order (not last-in first-out) therefore leave the thread on the first plugin's
stack after it was unmapped. The next signal whose handler runs on the alternate stack
(CPython installs its handlers with ``SA_ONSTACK``; PyTorch's DataLoader installs one for
``SIGCHLD``) then kills the process with SIGSEGV (``si_code`` SI_KERNEL: the kernel cannot write
the signal frame), or corrupts whatever was mapped there since. In this project's tests that
was an in-process ``ov_cpu`` sweep followed by any subprocess exit: exit 139, or a crash in
CPython's ``lock.acquire`` later (README, "Runtimes").

`keep_signal_stack` saves the thread's stack before the block and puts it back after it, so a
plugin's stack is never current when the plugin is destroyed and its destructor only unmaps
its own memory. The saved stack is the one the thread had before (CPython's faulthandler sizes
its own from ``AT_MINSIGSTKSZ``, so it fits AVX-512 and AMX frames), or none.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
from collections.abc import Iterator


class _StackT(ctypes.Structure):
    """``stack_t`` of <signal.h> on Linux."""

    _fields_ = [
        ("ss_sp", ctypes.c_void_p),
        ("ss_flags", ctypes.c_int),
        ("ss_size", ctypes.c_size_t),
    ]


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the process's own symbols, libc's included
    except OSError:
        return None
    return libc if hasattr(libc, "sigaltstack") else None


def current_signal_stack() -> tuple[int, int, int] | None:
    """This thread's alternate signal stack as ``(address, flags, size in bytes)``; None where
    it cannot be read (not Linux). ``flags`` 2 (``SS_DISABLE``) means the thread has none."""
    libc = _libc()
    if libc is None:
        return None
    stack = _StackT()
    if libc.sigaltstack(None, ctypes.byref(stack)) != 0:
        return None
    return (stack.ss_sp or 0, stack.ss_flags, stack.ss_size)


@contextlib.contextmanager
def keep_signal_stack() -> Iterator[None]:
    """Run the block, then restore this thread's alternate signal stack to what it was before
    (a no-op where `current_signal_stack` cannot read it)."""
    libc = _libc()
    saved = _StackT()
    if libc is None or libc.sigaltstack(None, ctypes.byref(saved)) != 0:
        yield
        return
    try:
        yield
    finally:
        now = _StackT()
        libc.sigaltstack(None, ctypes.byref(now))
        if (now.ss_sp, now.ss_flags, now.ss_size) != (saved.ss_sp, saved.ss_flags, saved.ss_size):
            saved.ss_flags &= 2  # SS_DISABLE only: SS_ONSTACK is a query result, not a setting
            if libc.sigaltstack(ctypes.byref(saved), None) != 0:
                err = ctypes.get_errno()
                raise OSError(err, "sigaltstack: cannot restore this thread's signal stack")
