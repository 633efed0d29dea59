"""feds2r: one-shot federated domain generalization for synthetic-to-real segmentation."""

from feds2r.data import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, open_dataset
from feds2r.errors import DataError, Feds2rError

__version__ = "0.1.0"

__all__ = [
    "CLASS_NAMES",
    "IGNORE_INDEX",
    "NUM_CLASSES",
    "DataError",
    "Feds2rError",
    "__version__",
    "open_dataset",
]
