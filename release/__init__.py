"""A model-release build system for object detectors.

A YAML manifest names a training checkpoint, a model, data, a target device, budgets and variants;
`doit release manifest=NAME` builds every variant incrementally, measures each on the ONNX file that
ships, gates it against the budgets and publishes the best one that passes.

This package must stay cheap to import: torch, onnxruntime and mlflow are imported only inside the
functions that need them, so that a no-op build never pays for them.
"""

__version__ = "0.1.0"
