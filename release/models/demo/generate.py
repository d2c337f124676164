"""The demo's generators (release/generate.py): the synthetic shapes dataset, and the demo detector
trained on it into a Lightning-style checkpoint. A manifest's `generate:` section names them
(recipes/rpi_detector.yaml), so the build makes its own inputs on a fresh clone, nothing downloaded.

The defaults are the bundled demo's (release.models.demo.train.default_config; a test keeps them
equal). torch is imported only inside `checkpoint`: manifest loading imports this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field

from release.generate import generator, show_progress

Count = Annotated[int, Field(gt=0)]


@generator(writes="folder", code=("release.models.demo.shapes",))
def data(out: Path, *, seed: int = 0, image_size: Annotated[int, Field(ge=32)] = 128, train_images: Count = 3000,
         calibration_images: Count = 64, eval_images: Count = 300) -> dict:
    """The shapes dataset: <out>/<split>/annotations.json and <out>/<split>/images/ for train,
    calibration and eval."""
    from release.models.demo import shapes

    return shapes.generate(out, seed=seed, image_size=image_size,
                           splits={"train": train_images, "calibration": calibration_images, "eval": eval_images})


@generator(writes="file", code=("release.models.demo.detector", "release.models.demo.train", "release.optim"),
           tools=("torch",), paths=("data",), model_kwargs=True)
def checkpoint(out: Path, *, data: str, image_size: Annotated[int, Field(ge=32)] = 128, steps: Count = 1600,
               batch_size: Count = 16, lr: Annotated[float, Field(gt=0)] = 0.012, seed: int = 0,
               num_classes: Count = 3, width: Annotated[float, Field(gt=0)] = 1.0) -> dict:
    """The demo detector (model.kwargs: num_classes, width) trained on <data>/train."""
    from release.models.demo import train

    return train.train(Path(data), out, num_classes=num_classes, width=width, image_size=image_size, steps=steps,
                       batch_size=batch_size, lr=lr, seed=seed, progress=show_progress())
