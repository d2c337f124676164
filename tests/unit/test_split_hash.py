"""A split's fingerprint hashes only the files it is read from (issue 12, finding 6: `/usr`)."""

from __future__ import annotations

import json
import time

from release.fingerprint import HashCache


def _split(folder, names):
    images = folder / "images"
    images.mkdir(parents=True)
    for n in names:
        (images / n).write_bytes(n.encode())
    ann = folder / "annotations.json"
    ann.write_text(json.dumps({"images": [{"id": i + 1, "file_name": n, "width": 8, "height": 8}
                                          for i, n in enumerate(names)], "annotations": [], "categories": []}))
    return ann, images


def test_only_named_images_are_hashed(tmp_path):
    ann, images = _split(tmp_path, ["a.png", "b.png"])
    cache = HashCache(tmp_path / "cache.json")
    first = cache.split(ann, images)
    (images / "notes.txt").write_text("not read by the split")
    (images / "sub").mkdir()
    (images / "sub" / "big.bin").write_bytes(b"x" * 1000)
    assert cache.split(ann, images) == first
    (images / "b.png").write_bytes(b"changed")
    assert cache.split(ann, images) != first


def test_images_only_split_hashes_top_level_images(tmp_path):
    _, images = _split(tmp_path, ["a.png", "b.jpg"])
    cache = HashCache(tmp_path / "cache.json")
    first = cache.split(None, images)
    (images / "readme.md").write_text("x")
    assert cache.split(None, images) == first
    (images / "c.png").write_bytes(b"new")
    assert cache.split(None, images) != first


def test_a_huge_folder_that_is_not_read_costs_nothing(tmp_path):
    """Pointing a split at a big tree only hashes what the annotations name (was: every file)."""
    ann, images = _split(tmp_path, ["a.png"])
    for i in range(3000):
        (images / f"other{i}.bin").write_bytes(b"y")
    cache = HashCache(tmp_path / "cache.json")
    started = time.perf_counter()
    cache.split(ann, images)
    assert len([k for k in cache._entries if not k.startswith("names:")]) == 2  # the json and a.png
    assert time.perf_counter() - started < 1.0
