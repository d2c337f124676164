"""The bundled demo: a synthetic shapes dataset, a small CenterNet-style detector and its trainer.

It lets the build system be exercised end to end on a CPU-only machine without downloading data or
weights: `shapes.generate` writes COCO splits, `train.train` writes a Lightning-style training
checkpoint, `generate:data` / `generate:checkpoint` are the generators a manifest's `generate:`
section names to have the build make both, and `detector:build` / `detector:Adapter` are what its
`model:` section names.
"""
