import os
import time

import pytest

from release.atomic import atomic_dir, atomic_file
from release.fingerprint import HashCache, digest


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            (tmp / "model.onnx").write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert not final.exists() and list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_an_older_complete_folder(tmp_path):
    final = tmp_path / "out"
    for content in (b"one", b"two"):
        with atomic_dir(final) as tmp:
            (tmp / "f").write_bytes(content)
    assert (final / "f").read_bytes() == b"two" and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_file(tmp_path):
    path = tmp_path / "x.json"
    with pytest.raises(KeyboardInterrupt):
        with atomic_file(path, "w") as handle:
            handle.write("{")
            raise KeyboardInterrupt
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_digest_is_order_independent_for_dicts_and_sensitive_to_values():
    assert digest({"a": 1, "b": 2}) == digest({"b": 2, "a": 1})
    assert digest({"a": 1}) != digest({"a": 2})


def test_hash_cache_rehashes_only_changed_files(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"x" * 1000)
    cache = HashCache(tmp_path / "cache.json")
    first = cache.file(f)
    cache.save()
    reloaded = HashCache(tmp_path / "cache.json")
    assert reloaded.file(f) == first and not reloaded._dirty  # served from the stat cache
    time.sleep(0.01)
    f.write_bytes(b"y" * 1000)
    os.utime(f, None)
    assert reloaded.file(f) != first


def test_leftovers_of_an_interrupted_write_are_removed_by_the_next(tmp_path):
    final = tmp_path / "out"
    (tmp_path / "out.tmp-abc").mkdir()
    (tmp_path / "out.tmp-abc" / "half").write_bytes(b"x")
    (tmp_path / "other.tmp-1").mkdir()  # another target's: left alone
    with atomic_dir(final) as tmp:
        (tmp / "f").write_bytes(b"done")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.tmp-1", "out"]


def test_a_live_writers_temp_is_never_removed(tmp_path):
    """Finding 5: stale-temp cleanup must not delete another live build's temp file."""
    import subprocess
    import sys

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        final = tmp_path / "hashes.json"
        theirs = tmp_path / f"hashes.json.tmp-{live.pid}-abc"
        theirs.write_text("being written")
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
        stale = tmp_path / f"hashes.json.tmp-{dead.stdout.strip()}-xyz"
        stale.write_text("left by a killed build")
        with atomic_file(final, "w") as handle:
            handle.write("{}")
        assert theirs.read_text() == "being written"  # a live writer's: kept
        assert not stale.exists()  # its writer is gone: removed
    finally:
        live.kill()
        live.wait()
