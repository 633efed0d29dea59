"""Evaluation metrics."""

from feds2r.metrics.miou import ConfusionMatrix

__all__ = ["ConfusionMatrix"]
