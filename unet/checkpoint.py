"""Checkpoints: plain dicts of tensors and primitives, loaded with ``weights_only=True`` only.

Format (``format = "unet-compress/checkpoint-v1"``)::

    {"format": ..., "config": UNetConfig.to_dict(), "state_dict": {...}, "meta": {...},
     # training checkpoints only:
     "train_state": {"optimizer": ..., "scheduler": ..., "step": int, "rng": {...}}}

``meta`` carries ``threshold`` (``{"WT": t, "TC": t, "ET": t}``), ``recipe`` (dict or None),
``metrics``, ``data_fingerprint`` and ``version``. A sparse (unstructured-pruned) model may be
stored with ``sparse=True``: each mostly-zero weight becomes a bit mask + its non-zero values,
which is what makes the file compress; loading restores the dense tensor transparently.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unet.config import UNetConfig
from unet.io import atomic_path
from unet.models import UNet

FORMAT = "unet-compress/checkpoint-v1"
_SPARSE_SUFFIX = ".__sparse__"


class CheckpointError(ValueError):
    """A file that is not a readable, safe unet-compress checkpoint."""


def _pack_sparse(state: dict[str, torch.Tensor], min_sparsity: float) -> dict[str, Any]:
    packed: dict[str, Any] = {}
    for key, t in state.items():
        if t.is_floating_point() and t.numel() >= 64:
            nz = t != 0
            if 1.0 - nz.float().mean().item() >= min_sparsity:
                bits = np.packbits(nz.flatten().numpy())
                packed[key + _SPARSE_SUFFIX] = {
                    "shape": list(t.shape),
                    "mask": torch.from_numpy(bits),
                    "values": t[nz].clone(),
                }
                continue
        packed[key] = t
    return packed


def _unpack_sparse(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, v in state.items():
        if key.endswith(_SPARSE_SUFFIX):
            shape = [int(s) for s in v["shape"]]
            n = int(np.prod(shape))
            nz = torch.from_numpy(np.unpackbits(v["mask"].numpy())[:n].astype(bool))
            dense = torch.zeros(n, dtype=v["values"].dtype)
            dense[nz] = v["values"]
            out[key[: -len(_SPARSE_SUFFIX)]] = dense.reshape(shape)
        else:
            out[key] = v
    return out


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    meta: dict[str, Any] | None = None,
    *,
    train_state: dict[str, Any] | None = None,
    sparse: bool = False,
    min_sparsity: float = 0.3,
) -> Path:
    """Save ``model`` (a `UNet`) with its config and ``meta`` atomically; return the path.

    ``sparse=True`` stores tensors with at least ``min_sparsity`` zeros as bit mask + values.
    """
    if not isinstance(model, UNet):
        raise TypeError(f"save_checkpoint expects a unet.UNet, got {type(model).__name__}")
    from unet import __version__

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = dict(meta or {})
    meta.setdefault("version", __version__)
    payload: dict[str, Any] = {
        "format": FORMAT,
        "config": model.config.to_dict(),
        "state_dict": _pack_sparse(state, min_sparsity) if sparse else state,
        "meta": meta,
    }
    if train_state is not None:
        payload["train_state"] = train_state
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def read_checkpoint(path: str | os.PathLike[str], map_location: str = "cpu") -> dict[str, Any]:
    """Load the raw checkpoint dict safely (``weights_only=True``); dense state_dict restored."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such checkpoint file")
    try:
        payload = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{p}: not a safe unet-compress checkpoint (refused by weights_only loading: {first})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{p}: not a unet-compress checkpoint (format tag missing or wrong)")
    for key in ("config", "state_dict", "meta"):
        if key not in payload:
            raise CheckpointError(f"{p}: checkpoint has no {key!r} entry")
    payload["state_dict"] = _unpack_sparse(payload["state_dict"])
    return payload


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str = "cpu"
) -> tuple[UNet, dict[str, Any]]:
    """Rebuild the model of a checkpoint (pruned widths included), in eval mode, with its meta.

    >>> model, meta = load_checkpoint("runs/sweep/trials/7/checkpoint.pt")  # doctest: +SKIP
    """
    payload = read_checkpoint(path, map_location)
    try:
        config = UNetConfig.from_dict(payload["config"])
        model = UNet(config)
        model.load_state_dict(payload["state_dict"])
    except (ValueError, RuntimeError, TypeError) as exc:
        raise CheckpointError(f"{Path(path)}: config and weights do not match: {exc}") from None
    model.eval()
    return model, payload["meta"]
