"""Runnable experiments that combine ``unet`` and ``compress``: ``python -m studies.<name>``."""
