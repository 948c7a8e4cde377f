"""unet-compress, baseline half: U-Net models, data, training and evaluation.

The one documented way to use a trained or compressed model::

    from unet import load_checkpoint
    model, meta = load_checkpoint("runs/unet2d-small.pt")   # eval mode, pruned widths included
    threshold = meta["threshold"]                           # per-region binary thresholds
"""

from unet.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from unet.config import UNetConfig
from unet.models import UNet

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "UNet",
    "UNetConfig",
    "__version__",
    "load_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
]
