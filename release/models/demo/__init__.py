"""The bundled demo: a synthetic shapes dataset, a small CenterNet-style detector and its trainer.

It lets the build system be exercised end to end on a CPU-only machine without downloading data or
weights: `shapes.generate` writes COCO splits, `train.train` writes a Lightning-style training
checkpoint, and `detector:build` / `detector:Adapter` are what a manifest names.
"""
