"""Hostile manifests: every input is either loaded or refused with a located ManifestError, fast.

Non-UTF-8 bytes, alias bombs, deep nesting, duplicate keys, huge strings and special files given
as data paths must never surface as a traceback (UnicodeDecodeError, RecursionError, MemoryError,
PermissionError), a hang, or a silently accepted value.
"""

from __future__ import annotations

import contextlib
import copy
import os
import random
import re
import signal
import socket
import time
from pathlib import Path

import pytest
import yaml

from release import manifest, manifest_yaml
from release.errors import ManifestError, ReleaseError
from tests.conftest import placeholder_data, tiny_manifest_dict

SPLITS = ("train", "calibration", "eval")


@contextlib.contextmanager
def deadline(seconds: float):
    """Fail (instead of hanging the suite) when the block runs longer than `seconds`."""

    def expired(signum, frame):
        raise TimeoutError(f"took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def load_text(tmp_path: Path, text: str | bytes, name: str = "m.yaml"):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with deadline(10):
        return manifest.load(path, tmp_path)


def problems(err: pytest.ExceptionInfo) -> list[str]:
    return [line.strip() for line in str(err.value).splitlines()[1:]]


def fake_data(root: Path) -> dict:
    """The tiny manifest's splits as files on disk (annotations json + an images folder with an image),
    with the generate section removed: what a project with its own data looks like."""
    doc = tiny_manifest_dict()
    doc.pop("generate")
    placeholder_data(root)
    ckpt = root / "artifacts" / "demo" / "train_last.ckpt"
    ckpt.write_bytes(b"not really a checkpoint")
    return doc


# ---------------------------------------------------------------- encoding

def test_non_utf8_bytes_are_one_located_line(tmp_path):
    text = yaml.safe_dump(tiny_manifest_dict(), sort_keys=False).encode()
    lines = text.split(b"\n")
    lines[2] = lines[2].replace(b"0.0.1", b"0.0.1-caf\xe9")  # Latin-1, as an editor on Windows saves it
    with pytest.raises(ManifestError) as err:
        load_text(tmp_path, b"\n".join(lines))
    message = str(err.value)
    assert len(message.splitlines()) == 1, message
    assert "line 3, column" in message and "byte" in message and "save the file as UTF-8" in message


def test_control_characters_are_located(tmp_path):
    text = yaml.safe_dump(tiny_manifest_dict(), sort_keys=False).replace("name: tiny", "name: ti\x00ny")
    with pytest.raises(ManifestError, match=r"line 2, column \d+: .*not valid YAML"):
        load_text(tmp_path, text)


# ---------------------------------------------------------------- aliases and nesting

def bomb(levels: int = 9, fan: int = 9) -> str:
    lines = ['a0: &a0 ["lol"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [{', '.join(f'*a{i - 1}' for _ in range(fan))}]")
    return "\n".join(lines)


def test_an_alias_bomb_is_refused_at_once(tmp_path):
    doc = yaml.safe_dump(tiny_manifest_dict(), sort_keys=False)
    text = doc.replace("model:\n", "model:\n  junk:\n" + "".join(f"    {line}\n" for line in bomb().splitlines()), 1)
    start = time.perf_counter()
    with pytest.raises(ManifestError) as err:
        load_text(tmp_path, text)
    assert time.perf_counter() - start < 1
    message = str(err.value)
    assert len(message.splitlines()) == 1, message
    assert "alias" in message and str(manifest_yaml.MAX_NODES) in message and "line" in message


def test_a_recursive_alias_is_refused(tmp_path):
    doc = yaml.safe_dump(tiny_manifest_dict(), sort_keys=False).replace("kwargs:\n", "kwargs: &k\n    self: *k\n", 1)
    with pytest.raises(ManifestError, match="refers to a node that contains it"):
        load_text(tmp_path, doc)


def test_the_line_index_does_not_rewalk_aliased_subtrees():
    node = yaml.compose(bomb(levels=30, fan=2), Loader=yaml.SafeLoader)  # 2^30 paths, 62 nodes
    start = time.perf_counter()
    with deadline(10):
        lines = manifest_yaml._line_index(node)
    assert time.perf_counter() - start < 0.1 and lines[("a30",)] == 31


def test_aliases_and_merge_keys_within_bounds_still_load(tmp_path):
    doc = yaml.safe_dump(tiny_manifest_dict(), sort_keys=False)
    doc = doc.replace("  fp32:\n  - strip\n  - export\n", "  fp32: &steps\n  - strip\n  - export\n  again: *steps\n", 1)
    doc = doc.replace("budget:\n", "budget:\n  <<: {size_mb: 5.0}\n", 1)  # merged, then overridden: no duplicate
    m = load_text(tmp_path, doc)
    assert m.budget.size_mb == 100.0 and [s for s, _ in m.pipelines["again"]] == ["strip", "export"]


@pytest.mark.parametrize("opening, closing", [("[", "]"), ("{a: ", "}")])
def test_deep_nesting_is_one_located_line(tmp_path, opening, closing):
    doc = yaml.safe_dump(tiny_manifest_dict(), sort_keys=False)
    doc += "extra: " + opening * 3000 + "1" + closing * 3000 + "\n"
    with pytest.raises(ManifestError) as err:
        load_text(tmp_path, doc)
    message = str(err.value)
    line = len(doc.splitlines())
    assert len(message.splitlines()) == 1 and f"line {line}, column" in message
    assert re.search("nested more than|maximum nesting depth", message), message  # ours, or libyaml's (1000)


# ---------------------------------------------------------------- duplicate keys

def test_duplicate_keys_name_both_lines(tmp_path):
    doc = yaml.safe_dump(tiny_manifest_dict(), sort_keys=False)
    doc = doc.replace("version: 0.0.1\n", "version: 0.0.1\nversion: 9.9.9\n", 1)
    doc = doc.replace("  drop:\n", "  strict: true\n  strict: false\n  drop:\n", 1)
    lines = doc.splitlines()
    first_version = lines.index("version: 0.0.1") + 1
    first_strict = lines.index("  strict: true") + 1
    with pytest.raises(ManifestError) as err:
        load_text(tmp_path, doc)
    found = problems(err)
    assert f"line {first_version + 1}, version: duplicate key 'version' (first on line {first_version})" in found[0]
    assert any(f"line {first_strict + 1}, source.strict: duplicate key 'strict' (first on line {first_strict})" in p
               for p in found), found


# ---------------------------------------------------------------- sizes

def test_a_huge_file_is_refused_before_parsing(tmp_path):
    doc = tiny_manifest_dict(name="a" * 3_000_000)
    with pytest.raises(ManifestError, match="larger than"):
        load_text(tmp_path, yaml.safe_dump(doc, sort_keys=False))


def test_a_huge_value_is_shown_shortened(tmp_path):
    doc = tiny_manifest_dict(name="a" * 50_000, budget={"size_mb": "b" * 50_000})
    with pytest.raises(ManifestError) as err:
        load_text(tmp_path, yaml.safe_dump(doc, sort_keys=False, width=10**9))
    assert len(str(err.value)) < 2000 and "name:" in str(err.value) and "budget.size_mb:" in str(err.value)


# ---------------------------------------------------------------- paths that are not data

def special(tmp_path: Path, kind: str) -> str:
    if kind == "fifo":
        os.mkfifo(tmp_path / "fifo")
        return str(tmp_path / "fifo")
    if kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(tmp_path / "sock"))
        sock.close()
        return str(tmp_path / "sock")
    if kind == "file":
        (tmp_path / "plain.txt").write_text("x")
        return str(tmp_path / "plain.txt")
    if kind == "empty-folder":
        (tmp_path / "empty").mkdir()
        return str(tmp_path / "empty")
    return kind


@pytest.mark.parametrize("field, value, expected", [
    ("annotations", "/proc/self/status", "a kernel pseudo-file"),
    ("annotations", "/proc/self/mem", "a kernel pseudo-file"),
    ("annotations", "/dev/zero", "a kernel pseudo-file"),
    ("annotations", "fifo", "not a regular file (a FIFO)"),
    ("annotations", "socket", "not a regular file (a socket)"),
    ("annotations", "/", "not a regular file (a folder)"),
    ("annotations", "nope.json", "no such file"),
    ("annotations", "bad\x00name", "cannot be used"),
    ("annotations", "x" * 5000, "cannot be used"),
    ("images", "/", "holds no image files"),
    ("images", "/usr", "holds no image files"),
    ("images", "/proc", "a kernel pseudo-file"),
    ("images", "/dev", "a kernel pseudo-file"),
    ("images", "file", "not a folder (a regular file)"),
    ("images", "fifo", "not a folder (a FIFO)"),
    ("images", "empty-folder", "holds no image files"),
    ("images", "nope", "no such folder"),
])
def test_data_paths_must_be_a_file_and_a_folder(tmp_path, field, value, expected):
    doc = fake_data(tmp_path)
    doc["data"]["eval"][field] = special(tmp_path, value)
    start = time.perf_counter()
    with pytest.raises(ManifestError) as err:
        load_text(tmp_path, yaml.safe_dump(doc, sort_keys=False))
    assert time.perf_counter() - start < 1
    found = problems(err)
    assert len(found) == 1 and f"data.eval.{field}:" in found[0] and expected in found[0], found


@pytest.mark.parametrize("value, expected", [
    ("/dev/null", "a kernel pseudo-file"), ("fifo", "not a regular file (a FIFO)"),
    ("empty-folder", "not a regular file (a folder)"),
])
def test_a_checkpoint_must_be_a_regular_file(tmp_path, value, expected):
    doc = fake_data(tmp_path)
    doc["source"]["checkpoint"] = special(tmp_path, value)
    with pytest.raises(ManifestError) as err:
        load_text(tmp_path, yaml.safe_dump(doc, sort_keys=False))
    assert len(problems(err)) == 1 and "source.checkpoint:" in str(err.value) and expected in str(err.value)


def test_own_data_on_disk_loads(tmp_path):
    m = load_text(tmp_path, yaml.safe_dump(fake_data(tmp_path), sort_keys=False))
    assert m.data.eval.images == tmp_path / "artifacts/demo/data/eval/images"


def test_the_manifest_itself_must_be_a_regular_file(tmp_path):
    os.mkfifo(tmp_path / "m.yaml")
    with deadline(5), pytest.raises(ManifestError, match="not a regular file"):
        manifest.load(tmp_path / "m.yaml", tmp_path)


# ---------------------------------------------------------------- generated cases

WRONG = [None, True, 0, -1, 1.5, 10**30, float("nan"), "", "x", "x" * 20_000, [], [1, [2]], {}, {"a": {"b": None}},
         "../../..", "/", "/proc/self/mem", "/dev/zero", "::", "a:b", "release.models.demo.detector:build", "é", "\u202e"]
PATHS = ["/", "/usr", "/proc/self/status", "/proc/self/mem", "/dev/null", "/dev/zero", "/etc/passwd",
         "../../../../victim", "x/../../..", "", ".", "artifacts", "artifacts/stages", "fifo", "socket",
         "bad\x00byte", "y" * 5000, "artifacts/demo/data/eval/images", "artifacts/demo/data/eval/annotations.json"]
PATH_FIELDS = [("source", "checkpoint"), ("generate", "data", "out"), ("generate", "checkpoint", "out"),
               ("generate", "checkpoint", "kwargs", "data")] + [
    ("data", s, k) for s in SPLITS for k in ("annotations", "images")]


def _paths(doc, path=()):
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield path + (k,), v
            yield from _paths(v, path + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield path + (i,), v
            yield from _paths(v, path + (i,))


def _set(doc, path, value):
    for part in path[:-1]:
        doc = doc[part] if isinstance(doc, list) or part in doc else doc.setdefault(part, {})
        if not isinstance(doc, (dict, list)):
            return
    if isinstance(doc, list) and not (isinstance(path[-1], int) and path[-1] < len(doc)):
        return
    doc[path[-1]] = value


def _mutations(rng: random.Random, tmp: Path, fifo: str, sock: str):
    """One case: (description, manifest bytes)."""
    base = tiny_manifest_dict()
    if rng.random() < 0.4:
        base.pop("generate")
    kind = rng.choice(["type", "type", "unknown", "drop", "path", "path", "bytes", "bomb", "nest", "dup", "huge",
                       "aliases"])
    doc = copy.deepcopy(base)
    if kind in ("type", "drop", "unknown"):
        fields = [p for p, _ in _paths(doc)]
        for _ in range(rng.randint(1, 3)):
            field = rng.choice(fields)
            if kind == "type":
                _set(doc, field, rng.choice(WRONG))
            elif kind == "unknown":
                _set(doc, field[:-1] + (rng.choice(["trustd", "buildr", "x" * 300, 7, "versoin"]),), rng.choice(WRONG))
            else:
                parent = doc
                for part in field[:-1]:
                    parent = parent[part]
                with contextlib.suppress(KeyError, IndexError, TypeError):
                    del parent[field[-1]]
                fields = [p for p, _ in _paths(doc)]
        text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=rng.random() < 0.5)
    elif kind == "path":
        for _ in range(rng.randint(1, 2)):
            value = rng.choice(PATHS)
            value = {"fifo": fifo, "socket": sock}.get(value, value)
            _set(doc, rng.choice(PATH_FIELDS), value)
        if rng.random() < 0.5:
            _set(doc, ("version",), rng.choice(["../../../../victim", "/tmp/x", "x/../../..", "..", ".", "1.0/2"]))
        text = yaml.safe_dump(doc, sort_keys=False)
    else:
        text = yaml.safe_dump(doc, sort_keys=False)
        lines = text.splitlines()
        at = rng.randrange(len(lines))
        if kind == "bytes":
            data = text.encode()
            pos = rng.randrange(len(data))
            bad = bytes(rng.choice([b"\xff", b"\xe9", b"\xc3", b"\x80\x80", b"\xed\xa0\x80"]))
            return kind, data[:pos] + bad + data[pos:]
        if kind == "bomb":
            levels, fan = rng.randint(5, 12), rng.randint(5, 12)
            block = bomb(levels, fan).splitlines()
            lines[at:at] = ["bomb:"] + ["  " + b for b in block] if rng.random() < 0.5 else [
                f"model_{at}: " + "{" + ", ".join(b.replace(": ", ": ", 1) for b in block) + "}"]
        elif kind == "nest":
            depth = rng.choice([70, 300, 3000, 20000])
            o, c = rng.choice([("[", "]"), ("{a: ", "}"), ("- ", "")])
            lines.append("deep: " + o * depth + "1" + c * depth if o != "- " else
                         "deep:\n" + "\n".join("  " * i + "- " for i in range(1, depth // 10)) + "x")
        elif kind == "dup":
            line = lines[at]
            lines.insert(at + 1, line if not line.lstrip().startswith("- ") else line.replace("- ", "", 1) + ": 1")
        elif kind == "huge":
            value = rng.choice(["a" * 200_000, "é" * 100_000, "[" + ", ".join(["1"] * 100_000) + "]",
                                "{" + ", ".join(f"k{i}: {i}" for i in range(30_000)) + "}"])
            lines.insert(at, f"huge: {value}" if rng.random() < 0.5 else f"name: {value}")
        elif kind == "aliases":
            lines.insert(0, "defaults: &d {warmup: 2, runs: 30}")
            lines.append("measure2: *d\nx: &x [*d, *d, *d]\ny: [*x, *x, *x, *x]")
        text = "\n".join(lines) + "\n"
    return kind, text.encode()


def test_generated_manifests_load_or_are_refused_fast(tmp_path):
    """A few hundred seeded mutations of the tiny manifest, loaded in-process: each loads or raises
    a ReleaseError (never another exception), each in well under a second."""
    fake_data(tmp_path)
    os.mkfifo(tmp_path / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    sock.close()
    rng = random.Random(12)
    timings, outcomes = [], {"loaded": 0, "refused": 0}
    for case in range(300):
        kind, data = _mutations(rng, tmp_path, str(tmp_path / "fifo"), str(tmp_path / "sock"))
        path = tmp_path / f"case{case}.yaml"
        path.write_bytes(data)
        start = time.perf_counter()
        try:
            with deadline(5):
                manifest.load(path, tmp_path)
            outcomes["loaded"] += 1
        except ReleaseError as exc:
            assert str(exc).startswith(str(path)), (kind, str(exc)[:500])
            outcomes["refused"] += 1
        except BaseException as exc:  # noqa: BLE001 - the point: nothing else may escape
            raise AssertionError(f"case {case} ({kind}) raised {type(exc).__name__}: {str(exc)[:300]}") from exc
        timings.append((time.perf_counter() - start, case, kind))
        path.unlink()
    slowest = max(timings)
    print(f"\n300 generated manifests: {outcomes}; slowest {slowest[0] * 1000:.0f} ms (case {slowest[1]}, "
          f"{slowest[2]}); total {sum(t for t, _, _ in timings):.2f} s")
    assert slowest[0] < 1, slowest
    assert outcomes["refused"] > 150 and outcomes["loaded"] > 5, outcomes
