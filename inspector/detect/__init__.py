"""From images to scores: tensors, tiling, scoring on the model's device, calibration, heat maps, and
the ``Inspector`` that turns a frame into a verdict."""
