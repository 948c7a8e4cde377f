"""`SweepSpec`: what every sweep worker needs, as primitives; and the baseline's own recipe.

    spec = SweepSpec(storage="journal:runs/sweep/s/study.journal", study_name="s",
                     study_dir="runs/sweep/s", data="runs/phantom.h5",
                     baseline="runs/unet2d-small.pt", trials=24)

A spec is pickled to spawned worker processes, hence primitives only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from compress.recipe import Recipe
from compress.runners import RUNTIMES
from studies.search_space import FINETUNE_STEPS, ROUND_TO
from unet.stats import DEFAULT_MARGIN, DEFAULT_REGION_MARGIN

# The reference every trial is compared with: the baseline itself (dense, fp32 ONNX) with its
# thresholds searched on val per region, as every trial's are; a baseline left at its training
# threshold (0.5) would make any recipe look better than it is.
BASELINE_RECIPE = Recipe(threshold="per-region", components="search")


@dataclass(frozen=True)
class SweepSpec:
    """Everything a worker needs (primitives; pickled to spawned worker processes)."""

    storage: str
    study_name: str
    study_dir: str
    data: str
    baseline: str
    trials: int
    timeout_s: float | None = None
    threads: int = 2
    device: str = "cpu"
    seed: int = 0
    latency_runs: int = 20
    max_dice_drop: float = DEFAULT_MARGIN  # feasibility on val: the test's non-inferiority rule
    max_region_drop: float = DEFAULT_REGION_MARGIN
    finetune_steps: tuple[int, ...] = FINETUNE_STEPS
    latency_backend: str = "ort_cpu"
    round_to: int = ROUND_TO[-1]
    warm_start: bool = True  # queue studies.warm_start's recipes in a new study

    @property
    def runtime(self) -> str:
        """The runtime every trial's artifact is built for (`compress.recipe.RUNTIMES`)."""
        return RUNTIMES[self.latency_backend]

    @property
    def backends(self) -> tuple[str, ...]:
        """Where each artifact is timed: the objective's backend first, then the runtime's
        usual ones (`compress.deploy.latency_backends`)."""
        from compress.deploy import latency_backends

        others = latency_backends(self.runtime, self.device)
        return tuple(dict.fromkeys((self.latency_backend, *others)))

    @property
    def baseline_recipe(self) -> Recipe:
        """`BASELINE_RECIPE` deployed on this sweep's runtime (dense fp32)."""
        return replace(BASELINE_RECIPE, runtime=self.runtime)
