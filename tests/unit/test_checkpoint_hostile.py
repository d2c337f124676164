"""A hostile battery for checkpoints (issue 12, finding 7): whatever file `release inspect` or `strip`
is given — junk, damaged, a payload that runs commands, a class whose code is missing — the answer is
one CheckpointError line naming the file, what is wrong and the fix; never a traceback, never code
run from an untrusted file, never a command run from any file. Payloads only touch marker files in
tmp_path, and each test asserts the marker does not exist afterwards. Tiny tensors: seconds."""

from __future__ import annotations

import copy
import importlib
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from release import checkpoint, cli, inspection
from release import manifest as manifests
from release.errors import CheckpointError
from release.stages import strip
from release.stages.base import StageContext
from tests.conftest import REPO, placeholder_data, tiny_manifest_dict, write_manifest

FORMATS = ["auto", "state_dict", "lightning", "mmdet", "yolov5", "safetensors"]
CLASS_MODULE = "hostile_models_c7.yolo"  # a made-up package: importable only while the fixture saves


class _System:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Eval:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w')",))


def _crafted(module: str, name: str, arg: str, protocol: int = 2) -> bytes:
    """A pickle calling module.name(arg), written opcode by opcode (GLOBAL for protocol 2, else STACK_GLOBAL)."""
    def text(s: str) -> bytes:
        data = s.encode()
        return b"X" + len(data).to_bytes(4, "little") + data

    call = (b"c" + f"{module}\n{name}\n".encode() if protocol == 2 else text(module) + text(name) + b"\x93")
    return bytes([0x80, protocol]) + b"}" + text("x") + call + text(arg) + b"\x85R" + b"s."


def _flip_a_bit_in_every_tensor(path: Path) -> None:
    import zipfile

    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if "/data/" in info.filename and info.file_size:
                start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
                raw[start + info.file_size // 2] ^= 0x04
    path.write_bytes(bytes(raw))


def _save_unimportable_class(folder: Path, path: Path) -> None:
    """A YOLOv5-style file of pickled modules whose class lives in a package deleted right after saving."""
    pkg = folder / "code" / CLASS_MODULE.split(".")[0]
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "yolo.py").write_text("import torch\n\nclass Model(torch.nn.Module):\n    def __init__(self):\n"
                                 "        super().__init__()\n        self.conv = torch.nn.Conv2d(3, 4, 1)\n")
    sys.path.insert(0, str(folder / "code"))
    try:
        model = importlib.import_module(CLASS_MODULE).Model().half()
        torch.save({"epoch": 1, "model": model, "ema": copy.deepcopy(model)}, path)
    finally:
        sys.path.remove(str(folder / "code"))
        for name in [n for n in sys.modules if n.split(".")[0] == CLASS_MODULE.split(".")[0]]:
            del sys.modules[name]
        for file in sorted(pkg.rglob("*"), reverse=True):
            file.unlink() if file.is_file() else file.rmdir()
        pkg.rmdir()
        importlib.invalidate_caches()


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    """{name: path} of bad inputs, and the folder the payloads would touch their markers in."""
    d = tmp_path_factory.mktemp("hostile")
    files = {}

    def save(name, obj):
        files[name] = d / f"{name}.pt"
        torch.save(obj, files[name])

    save("bare_tensor", torch.zeros(3))
    save("list", [torch.zeros(3), 1])
    save("empty_dict", {})
    save("none", None)
    save("int", 7)
    save("nested_junk", {"a": {"b": [1, {"c": "x"}]}, 3: None, "state_dict": {1: "no", "w": [torch.zeros(1)]}})
    save("good", {"w": torch.randn(64, 64)})
    raw = files["good"].read_bytes()
    files["truncated_zip"] = d / "truncated_zip.pt"
    files["truncated_zip"].write_bytes(raw[: len(raw) // 2])
    files["bit_flipped_zip"] = d / "bit_flipped_zip.pt"
    files["bit_flipped_zip"].write_bytes(raw)
    _flip_a_bit_in_every_tensor(files["bit_flipped_zip"])
    rng = torch.Generator().manual_seed(0)
    for name, head in (("random_bytes", b""), ("random_pickle_head", b"\x80"), ("random_zip_head", b"PK")):
        files[name] = d / f"{name}.pt"
        files[name].write_bytes(head + bytes(torch.randint(0, 256, (2000,), generator=rng, dtype=torch.uint8).tolist()))
    files["empty_file"] = d / "empty_file.pt"
    files["empty_file"].write_bytes(b"")
    files["a_directory"] = d / "a_directory.pt"
    files["a_directory"].mkdir()
    files["missing_path"] = d / "missing.pt"
    save("os_system_payload", {"state_dict": {"w": torch.zeros(2)}, "x": _System(d / "pwned_system")})
    save("eval_payload", {"state_dict": {"w": torch.zeros(2)}, "x": _Eval(d / "pwned_eval")})
    files["stack_global_payload"] = d / "stack_global_payload.pt"
    files["stack_global_payload"].write_bytes(_crafted("subprocess", "getoutput", f"touch {d / 'pwned_sub'}", 4))
    files["unimportable_class"] = d / "unimportable_class.pt"
    _save_unimportable_class(d, files["unimportable_class"])
    return files, d


def _markers_absent(folder: Path) -> None:
    assert not list(folder.glob("pwned*")), "a payload ran"


@pytest.mark.parametrize("trusted", [False, True])
@pytest.mark.parametrize("fmt", FORMATS)
def test_inspect_never_tracebacks(bad, capsys, fmt, trusted):
    files, folder = bad
    flags = ["--trusted"] if trusted else []
    for name, path in files.items():
        if name == "good":
            continue
        code = cli.main(["inspect", str(path), "--format", fmt, *flags])
        out, err = capsys.readouterr()
        lines = err.strip().splitlines()
        assert code == 3 and not out, (name, code, out, err)  # a mistake (docs/ci.md), never a crash
        assert len(lines) == 1 and lines[0].startswith("ERROR: ") and "Traceback" not in err, (name, err)
        assert str(path) in err, (name, err)
    _markers_absent(folder)


def test_inspect_in_a_real_process_prints_one_line(bad):
    """python -m release inspect: no warning or traceback beside the ERROR line (the torch pickle-protocol
    warning included)."""
    files, folder = bad
    script = ("import sys\nfrom release import cli\n"
              "codes = [cli.main(['inspect', p, '--trusted']) for p in sys.argv[1:]]\n"
              "sys.exit(0 if codes == [3] * len(codes) else 1)")
    names = ["bit_flipped_zip", "random_pickle_head", "os_system_payload", "unimportable_class", "list"]
    run = subprocess.run([sys.executable, "-c", script, *(str(files[n]) for n in names)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 0 and len(lines) == len(names), run.stderr
    assert all(line.startswith("ERROR: ") for line in lines) and "Traceback" not in run.stderr
    _markers_absent(folder)


@pytest.mark.parametrize("fmt", ["state_dict", "auto"])
def test_junk_of_an_explicit_format_says_what_the_file_holds(bad, fmt):
    files, _ = bad
    expected = {"bare_tensor": "a Tensor", "list": "a list of 2", "empty_dict": "holds no weights",
                "none": "None", "int": "an int"}
    for name, words in expected.items():
        with pytest.raises(CheckpointError, match=words) as err:
            inspection.inspect(files[name], fmt)
        assert str(files[name]) in str(err.value)


def test_a_bit_flipped_tensor_is_a_damaged_file(bad):
    files, _ = bad
    torch.load(files["bit_flipped_zip"], weights_only=True)  # torch itself reads it silently
    for trusted in (False, True):
        with pytest.raises(CheckpointError, match=r"the file is damaged: .*data/0.*Copy it again") as err:
            checkpoint.read(files["bit_flipped_zip"], trusted=trusted)
        assert str(files["bit_flipped_zip"]) in str(err.value)
    assert checkpoint.read(files["good"])[0] == "state_dict"  # the undamaged original


@pytest.mark.parametrize("payload, shown", [
    ("os_system_payload", "os.system"), ("eval_payload", "builtins.eval"),
    ("stack_global_payload", "subprocess.getoutput"),
])
def test_a_payload_is_named_as_such_without_a_trust_hint(bad, payload, shown):
    files, folder = bad
    for trusted in (False, True):
        with pytest.raises(CheckpointError) as err:
            checkpoint.read(files[payload], trusted=trusted)
        text = str(err.value)
        assert f"this file asks to run {shown} when loaded: it is not a checkpoint a training run writes; " \
               f"do not load it" in text
        assert "trusted" not in text and str(files[payload]) in text
    _markers_absent(folder)


@pytest.mark.parametrize("module, name", [
    ("os", "system"), ("posix", "system"), ("nt", "system"), ("subprocess", "Popen"), ("builtins", "exec"),
    ("builtins", "compile"), ("builtins", "__import__"), ("__builtin__", "eval"),
    ("pty", "spawn"), ("shutil", "rmtree"), ("socket", "create_connection"), ("runpy", "run_path"),
])
@pytest.mark.parametrize("protocol", [2, 4])
def test_every_command_running_global_is_refused(tmp_path, module, name, protocol):
    path = tmp_path / "payload.pkl"
    marker = tmp_path / "pwned"  # a shell command for the command runners, else a path that is not there
    arg = f"touch {marker}" if module in ("os", "posix", "nt", "subprocess") else str(marker)
    path.write_bytes(_crafted(module, name, arg, protocol))
    with pytest.raises(CheckpointError, match=f"asks to run .*{name} when loaded") as err:
        checkpoint.read(path, trusted=True)
    assert "trusted" not in str(err.value)
    _markers_absent(tmp_path)


def test_getattr_is_refused_by_name_unless_trusted(tmp_path):
    """Real pickled model objects may use getattr (bound methods, enum members): named as a
    payload in an untrusted file, accepted by the scan in a trusted one."""
    path = tmp_path / "payload.pkl"
    path.write_bytes(_crafted("builtins", "getattr", str(tmp_path / "pwned"), 4))
    with pytest.raises(CheckpointError, match="asks to run builtins.getattr when loaded"):
        checkpoint.read(path)
    with pytest.raises(CheckpointError) as err:
        checkpoint.read(path, trusted=True)
    assert "asks to run" not in str(err.value)
    _markers_absent(tmp_path)


def test_a_payload_behind_a_model_class_is_still_named(tmp_path):
    """torch's weights_only error names only the first unknown global; the scan reads them all."""
    path = tmp_path / "best.pt"
    benign = b"c" + f"{CLASS_MODULE}\nModel\n".encode() + b")Rs"
    evil = _crafted("os", "system", f"touch {tmp_path / 'pwned'}")
    path.write_bytes(evil[:3] + b"X\x01\x00\x00\x00m" + benign + evil[3:])  # {'m': Model(), 'x': os.system(...)}
    with pytest.raises(CheckpointError, match="asks to run os.system when loaded") as err:
        checkpoint.read(path)
    assert "trusted" not in str(err.value)
    _markers_absent(tmp_path)


def test_an_unimportable_trusted_class_says_how_to_make_it_importable(bad, capsys):
    files, _ = bad
    path = files["unimportable_class"]
    with pytest.raises(CheckpointError, match="needs code to unpickle.*source.trusted: true"):
        checkpoint.read(path)  # untrusted: the usual refusal, naming the class
    with pytest.raises(CheckpointError) as err:
        checkpoint.read(path, trusted=True)
    text = str(err.value)
    assert f"{CLASS_MODULE}.Model cannot be imported here" in text and str(path) in text
    assert f"Install the package that provides {CLASS_MODULE} or add its folder to PYTHONPATH" in text
    assert cli.main(["inspect", str(path), "--trusted"]) == 3
    assert "ModuleNotFoundError" not in capsys.readouterr().err


# ------------------------------------------------------------------------------------ strip and drop

def _demo_state(width: float = 0.5, aux: bool = False) -> dict:
    from release.models.demo.detector import build

    torch.manual_seed(0)
    return build(3, width, aux_head=aux).state_dict()


def _strip(tmp_path: Path, path: Path, params=None, **source):
    doc = tiny_manifest_dict()
    doc.pop("generate")
    placeholder_data(tmp_path)
    doc["source"] = {"checkpoint": str(path), **source}
    manifest = manifests.load(write_manifest(tmp_path, doc, f"{path.stem}.yaml"), tmp_path)
    out = tmp_path / f"strip-{path.stem}-{len(list(tmp_path.glob('strip-*')))}"
    out.mkdir()
    ctx = StageContext(input=path, out_dir=out, params=params or strip.Params(), manifest=manifest,
                       log=lambda m: None, spec_produces="weights")
    return strip.run(ctx), ctx


def test_strip_of_an_unimportable_trusted_class_is_one_clear_error(bad, tmp_path):
    files, _ = bad
    with pytest.raises(CheckpointError, match=f"provides {CLASS_MODULE} or add its folder to PYTHONPATH"):
        _strip(tmp_path, files["unimportable_class"], trusted=True)


@pytest.fixture()
def ema_without_aux(tmp_path):
    """NanoDet-style: the raw copy carries the aux head, the EMA copy (which strip keeps) does not."""
    full = _demo_state(aux=True)
    sd = {f"model.{k}": v for k, v in full.items()}
    sd.update({f"avg_model.{k}": v.clone() for k, v in full.items() if not k.startswith("aux_head.")})
    path = tmp_path / "last.ckpt"
    torch.save({"epoch": 1, "state_dict": sd}, path)
    return path


def test_a_drop_pattern_matching_only_the_other_copy_says_so(ema_without_aux, tmp_path):
    path = ema_without_aux
    for run in (lambda: inspection.inspect(path, drop=["aux_head.*"]),
                lambda: _strip(tmp_path, path, drop=["aux_head.*"])):
        with pytest.raises(CheckpointError) as err:
            run()
        text = str(err.value)
        assert "'aux_head.*' matches no parameter of the ema copy that strip keeps (avg_model.*)" in text
        assert "matches only" in text and "of the raw copy (model.*, e.g. model.aux_head." in text
        assert "source.weights: raw" in text and len(text.splitlines()) == 1
    info = inspection.inspect(path, drop=["aux_head.*"], weights="raw")  # the raw copy: the pattern applies
    assert info["dropped"] and all(k.startswith("aux_head.") for k in info["dropped"])


def test_a_drop_pattern_written_with_the_prefix_is_named(ema_without_aux):
    with pytest.raises(CheckpointError, match="without the 'avg_model.' prefix .* Write 'stem.*'"):
        inspection.inspect(ema_without_aux, drop=["avg_model.stem.*"])


def _yolov5_fp16(folder: Path) -> Path:
    """Pickled fp16 modules with an EMA copy and Adam moments, as YOLOv5's train.py saves."""
    from release.models.demo.detector import build

    model = build(3, 0.5)
    model.load_state_dict(_demo_state())
    moments = {i: {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
               for i, p in enumerate(model.parameters())}
    path = folder / "best.pt"
    torch.save({"epoch": 9, "model": copy.deepcopy(model).half(), "ema": copy.deepcopy(model).half(),
                "optimizer": {"state": moments, "param_groups": []}, "updates": 90}, path)
    return path


def test_strip_keeps_the_stored_fp16_and_inspect_predicts_the_size(tmp_path):
    from safetensors.torch import load_file

    path = _yolov5_fp16(tmp_path)
    info = inspection.inspect(path, trusted=True)
    facts, ctx = _strip(tmp_path, path, trusted=True)  # default params: dtype 'stored'
    stored = load_file(str(ctx.output))
    assert {str(v.dtype) for v in stored.values() if v.is_floating_point()} == {"torch.float16"}
    assert facts["bytes_after"] < facts["bytes_before"]
    assert info["kept_dtypes"] == ["float16", "int64"]
    assert info["stripped_bytes"] == facts["bytes_after"]  # inspect says what strip really writes
    assert info["saving_bytes"] == facts["bytes_before"] - facts["bytes_after"] > 0
    assert f"write {facts['bytes_after'] / 1e6:.2f} MB: it saves" in inspection.render(info)
    fp32, ctx32 = _strip(tmp_path, path, strip.Params(dtype="float32"), trusted=True)  # asked for: converts
    assert {str(v.dtype) for v in load_file(str(ctx32.output)).values() if v.is_floating_point()} == {"torch.float32"}
    assert inspection.inspect(path, trusted=True, dtype="float32")["stripped_bytes"] == fp32["bytes_after"]
    print(f"fp16 yolov5-style: file {facts['bytes_before']} B, strip (stored) {facts['bytes_after']} B, "
          f"strip float32 {fp32['bytes_after']} B")


def test_inspect_predicts_strip_for_an_fp32_lightning_file(tmp_path):
    state = _demo_state()
    path = tmp_path / "fp32.ckpt"
    torch.save({"epoch": 1, "state_dict": {f"model.{k}": v for k, v in state.items()},
                "optimizer_states": [{"state": {i: torch.zeros_like(v) for i, v in enumerate(state.values())}}]},
               path)
    info = inspection.inspect(path)
    facts, _ = _strip(tmp_path, path)
    assert info["stripped_bytes"] == facts["bytes_after"] and info["kept_dtypes"] == ["float32", "int64"]


def test_a_file_that_would_grow_says_so():
    info = {"path": "x.pt", "format": "state_dict", "bytes": 1000, "keys": [], "groups": {}, "training_keys": [],
            "other_copies": [], "dropped": [], "kept_tensors": 1, "kept_parameters": 10, "kept_dtypes": ["float32"],
            "kept_bytes": 40, "stripped_bytes": 1200, "saving_bytes": -200, "trusted": False, "copy": "raw",
            "prefix": ""}
    assert "the file grows by 0.00 MB" in inspection.render(info)


def test_pickle_files_from_pickle_dump_are_scanned_too(tmp_path):
    path = tmp_path / "plain.pkl"
    with open(path, "wb") as handle:
        pickle.dump({"w": torch.zeros(2), "x": _System(tmp_path / "pwned")}, handle, protocol=4)
    with pytest.raises(CheckpointError, match="asks to run os.system when loaded"):
        checkpoint.read(path, trusted=True)
    _markers_absent(tmp_path)
