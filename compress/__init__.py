"""unet-compress, compression half: everything that changes a trained model.

Each step works on its own from Python (pruning: ``compress.prune``; casting, thresholds,
export and measurement in their own modules) and a `compress.recipe.Recipe` chains them::

    from compress.prune import prune_structured
    small = prune_structured(model, 0.5, round_to=8)   # a plain unet.UNet with smaller widths

This package imports nothing heavy at import time; import the submodule you need.
"""
