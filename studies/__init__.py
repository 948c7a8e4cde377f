"""Runnable experiments that combine ``unet`` and ``compress``: ``python -m studies.<name>``."""

from studies.pareto import TrialModel, pareto_models

__all__ = ["TrialModel", "pareto_models"]
