"""`release inspect`: what a checkpoint holds, read-only and without running pickled code."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from release import cli, inspection
from release.models.demo.detector import build
from release.errors import CheckpointError


@pytest.fixture(scope="module")
def lightning_ckpt(tmp_path_factory):
    """A Lightning-shaped training checkpoint: raw and EMA copies, an aux head, Adam moments."""
    torch.manual_seed(0)
    model = build(3, 0.25, aux_head=True)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.zeros(2, 3, 64, 64))[0].sum().backward()
    optimizer.step()
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    state.update({f"avg_model.{k}": v.clone() for k, v in model.state_dict().items()})
    path = tmp_path_factory.mktemp("ckpt") / "last.ckpt"
    torch.save({"epoch": 3, "global_step": 10, "state_dict": state, "optimizer_states": [optimizer.state_dict()],
                "lr_schedulers": [], "hyper_parameters": {"width": 0.25}}, path)
    deploy = {k: v for k, v in build(3, 0.25).state_dict().items()}
    return path, sum(v.numel() * v.element_size() for v in deploy.values())


def test_inspect_finds_the_training_only_content_and_the_saving(lightning_ckpt):
    path, deploy_bytes = lightning_ckpt
    info = inspection.inspect(path, drop=["aux_head.*"])
    assert info["format"] == "lightning" and info["copy"] == "ema" and info["prefix"] == "avg_model."
    assert {"optimizer_states", "epoch", "global_step", "hyper_parameters"} <= set(info["training_keys"])
    assert info["other_copies"] == ["model"]
    assert info["dropped"] and all(k.startswith("aux_head.") for k in info["dropped"])
    assert info["kept_bytes"] == deploy_bytes  # exactly the tensor bytes strip writes (fp32 stored: fp32)
    assert info["kept_dtypes"] == ["float32", "int64"]
    assert deploy_bytes < info["stripped_bytes"] < deploy_bytes + 20_000  # plus the safetensors header
    assert info["saving_bytes"] == path.stat().st_size - info["stripped_bytes"]
    keys = {k["key"]: k for k in info["keys"]}
    # Adam keeps two moments per parameter: its state is about as big as the raw weights' copy.
    assert keys["optimizer_states"]["bytes"] > 0.4 * keys["state_dict"]["bytes"]
    assert {"model.stem", "avg_model.stem", "model.aux_head"} <= set(info["groups"])
    text = inspection.render(info)
    assert "training state: epoch, global_step, optimizer_states" in text
    assert "other copies of the weights: model.*" in text and "strip would keep" in text and "it saves" in text


def test_cli_prints_text_and_json(lightning_ckpt, capsys):
    path, _ = lightning_ckpt
    assert cli.main(["inspect", str(path)]) == 0
    assert "lightning checkpoint" in capsys.readouterr().out
    assert cli.main(["inspect", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "lightning"


class _Payload:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump({"state_dict": {"w": torch.zeros(2)}, "hook": _Payload(marker)}, handle)
    with pytest.raises(CheckpointError, match="asks to run io.open when loaded: .*do not load it"):
        inspection.inspect(path)
    for trusted in ([], ["--trusted"]):
        assert cli.main(["inspect", str(path), *trusted]) == 3  # a mistake (docs/ci.md)
        err = capsys.readouterr().err
        assert "trusted" not in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()  # the code did not run


@pytest.mark.parametrize("content, message", [(b"", "the file is empty"), (b"hello world", "not a PyTorch checkpoint")])
def test_malformed_files_give_one_clear_line(tmp_path, capsys, content, message):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    assert cli.main(["inspect", str(path)]) == 3
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
