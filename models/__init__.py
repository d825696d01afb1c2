"""The anomaly detectors: torch only, no Qt, no OpenCV, nothing from the application.

Importing this package registers every method; ask ``models.base`` for them by name.
"""

from . import ae, agad, agad_features, ede, ede_features, eidn, patchcore  # noqa: F401  (each module registers its method)
from .base import (
                   DEFAULT_METHOD,
                   Detector,
                   Inference,
                   TrainBatch,
                   TrainingDefaults,
                   UnknownMethodError,
                   create,
                   get_method,
                   method_names,
)

__all__ = ["DEFAULT_METHOD", "Detector", "Inference", "TrainBatch", "TrainingDefaults", "UnknownMethodError",
           "create", "get_method", "method_names"]
