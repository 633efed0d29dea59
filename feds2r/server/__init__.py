"""Server side of FedS2R: inconsistency, prompts, image generation, distillation."""

from feds2r.server.inconsistency import (
    Inconsistency,
    PairwiseAgreement,
    UnstableRule,
    measure_inconsistency,
    plot_inconsistency,
    select_unstable,
)

__all__ = [
    "Inconsistency",
    "PairwiseAgreement",
    "UnstableRule",
    "measure_inconsistency",
    "plot_inconsistency",
    "select_unstable",
]
