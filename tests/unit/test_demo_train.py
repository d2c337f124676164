"""Demo training on the tiny config: the loss falls and the checkpoint looks like Lightning's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from release.models.demo import shapes
from release.models.demo.detector import build
from release.models.demo.train import default_config, tiny_config, train

LIGHTNING_KEYS = {"epoch", "global_step", "pytorch-lightning_version", "state_dict", "optimizer_states",
                  "lr_schedulers", "callbacks", "hyper_parameters", "loops"}


def _train_kwargs(cfg: dict) -> dict:
    keys = ("num_classes", "width", "image_size", "steps", "batch_size", "lr", "seed")
    return {k: cfg[k] for k in keys}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict, dict]:
    cfg = tiny_config()
    root = tmp_path_factory.mktemp("demo")
    shapes.generate(root / "data", seed=cfg["seed"], splits={"train": cfg["train_images"]},
                    image_size=cfg["image_size"], workers=1)
    ckpt = root / "out" / "last.ckpt"
    summary = train(root / "data", ckpt, progress=False, **_train_kwargs(cfg))
    return ckpt, summary, cfg


def test_configs_have_the_documented_keys():
    keys = {"seed", "image_size", "train_images", "calibration_images", "eval_images", "steps", "batch_size",
            "lr", "width", "num_classes"}
    assert set(default_config()) == keys and set(tiny_config()) == keys
    assert tiny_config()["steps"] < default_config()["steps"]


def test_default_config_is_what_the_generators_and_recipe_use():
    """The trainer's defaults are stated in three places; they must not drift apart."""
    import inspect

    from release.manifest import load
    from release.models.demo import generate
    from tests.conftest import REPO

    cfg = default_config()
    recipe = load(REPO / "recipes" / "rpi_detector.yaml", REPO)
    for name, keys in (("data", ("seed", "image_size", "train_images", "calibration_images", "eval_images")),
                       ("checkpoint", ("seed", "image_size", "steps", "batch_size", "lr"))):
        defaults = inspect.signature(getattr(generate, name)).parameters
        for key in keys:
            assert cfg[key] == defaults[key].default == recipe.generate[name].kwargs[key], (name, key)
    defaults = inspect.signature(generate.checkpoint).parameters
    assert {k: cfg[k] for k in ("num_classes", "width")} == recipe.model.kwargs == \
        {k: defaults[k].default for k in ("num_classes", "width")}


def test_loss_falls(trained):
    _, summary, cfg = trained
    assert summary["steps"] == cfg["steps"] and summary["images"] == cfg["train_images"]
    assert summary["loss_final"] < 0.8 * summary["loss_start"]
    assert summary["parameters"]["deploy"] < summary["parameters"]["train"]


def test_checkpoint_is_lightning_shaped_and_safe_to_load(trained):
    ckpt_path, _, cfg = trained
    assert [p.name for p in ckpt_path.parent.iterdir()] == ["last.ckpt"]  # no temp file left behind
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert set(ckpt) == LIGHTNING_KEYS
    assert ckpt["global_step"] == cfg["steps"] and ckpt["pytorch-lightning_version"] == "2.4.0"
    assert ckpt["hyper_parameters"] == _train_kwargs(cfg)
    state = ckpt["state_dict"]
    assert any(k.startswith("model.aux_head.") for k in state)
    assert any(k.startswith("avg_model.aux_head.") for k in state)
    raw = {k[len("model."):] for k in state if k.startswith("model.")}
    assert raw == {k[len("avg_model."):] for k in state if k.startswith("avg_model.")}
    assert len(raw) * 2 == len(state)
    # Training runs channels_last; the checkpoint must still hold standard-layout tensors
    # (safetensors rejects anything else).
    assert all(v.is_contiguous() for v in state.values())
    opt = ckpt["optimizer_states"][0]
    assert {"exp_avg", "exp_avg_sq"} <= set(next(iter(opt["state"].values())))
    assert ckpt["lr_schedulers"][0]["last_epoch"] == cfg["steps"]
    assert ckpt["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"] == cfg["steps"]


def test_ema_weights_load_into_the_deploy_model(trained):
    ckpt_path, _, cfg = trained
    state = torch.load(ckpt_path, weights_only=True)["state_dict"]
    ema = {k[len("avg_model."):]: v for k, v in state.items() if k.startswith("avg_model.")}
    deploy = {k: v for k, v in ema.items() if not k.startswith("aux_head.")}
    model = build(cfg["num_classes"], cfg["width"])
    model.load_state_dict(deploy, strict=True)
    # The EMA is a real average: it lags the raw weights, it is not a copy of them.
    changed = [k for k, v in deploy.items() if v.is_floating_point() and not torch.equal(v, state[f"model.{k}"])]
    assert changed


def test_same_seed_same_bytes_wherever_written(trained, tmp_path):
    ckpt_path, summary, cfg = trained
    again = tmp_path / "elsewhere" / "other-name.ckpt"
    summary2 = train(ckpt_path.parent.parent / "data", again, progress=False, **_train_kwargs(cfg))
    assert summary2["loss_final"] == summary["loss_final"]
    assert again.read_bytes() == ckpt_path.read_bytes()


def test_other_seed_other_weights(trained, tmp_path):
    ckpt_path, _, cfg = trained
    other = tmp_path / "other.ckpt"
    train(ckpt_path.parent.parent / "data", other, progress=False, **{**_train_kwargs(cfg), "seed": cfg["seed"] + 1})
    a = torch.load(ckpt_path, weights_only=True)["state_dict"]
    b = torch.load(other, weights_only=True)["state_dict"]
    assert not torch.equal(a["model.heatmap.0.weight"], b["model.heatmap.0.weight"])
