"""`release init --data ...`: a manifest's `data:` section from a dataset as it lies on disk.

What `--data` takes (paths relative to the project folder, or absolute):

- a YOLO `data.yaml` (Ultralytics): its `path` (relative to the yaml's folder; default that folder)
  and its `train` / `val` / `test` image folders; each split's labels are in the sibling `labels/`
  folder (images/train -> labels/train), class names come from the yaml itself;
- a folder holding `images/` and `labels/` (YOLO): images/<split>/ subfolders give splits (train,
  val, test), else the one folder is the eval split; class names from a `data.yaml` or
  `classes.txt` in the folder, or `--names a,b,c`;
- a folder holding `annotations.json` and `images/` (COCO): the eval split;
- a folder holding split folders (train/, val/, eval/, calibration/, ...), each one of the two above;
- `SPLIT=PATH`, repeatable: PATH is a COCO json (its images in the sibling `images/` folder, or
  `SPLIT=ANNOTATIONS.json,IMAGES`) or a YOLO images folder.

Split names map to the manifest's: val, valid, validation (else test) -> eval; train, calibration,
tuning, eval stay. Calibration, which reads images only, defaults to the train images (else eval's).
"""

from __future__ import annotations

import os
from pathlib import Path

from release.errors import ReleaseError
from release.fingerprint import IMAGE_SUFFIXES

SPLITS = ("train", "calibration", "tuning", "eval")
ALIASES = {"val": "eval", "valid": "eval", "validation": "eval", "test": "eval"}
LAYOUTS = ("a YOLO data.yaml, a folder holding images/ and labels/ (YOLO) or annotations.json and images/ "
           "(COCO), a folder of such split folders, or SPLIT=PATH")


class DataSpec:
    """The splits found (manifest split -> a data entry as plain data) and how they were found."""

    def __init__(self, splits: dict[str, dict], described: str):
        self.splits, self.described = splits, described


def from_args(values: list[str], root: Path, names: list[str] | None) -> DataSpec:
    """The `data:` splits of one or more `--data` values."""
    if all("=" in v and not Path(root, v).exists() for v in values):
        splits = {}
        for value in values:
            split, _, path = value.partition("=")
            splits[_split_name(split, value)] = _one_split(path, root, names, value)
        return _with_calibration(splits, f"splits given as {', '.join(values)}")
    if len(values) != 1:
        raise ReleaseError(f"--data {' '.join(values)}: give one dataset ({LAYOUTS}), or every split as SPLIT=PATH.")
    return _dataset(values[0], root, names)


def _split_name(split: str, value: str) -> str:
    name = ALIASES.get(split, split)
    if name not in SPLITS:
        raise ReleaseError(f"--data {value}: '{split}' is not a split; use one of {', '.join(SPLITS)} "
                           f"(val and test mean eval).")
    return name


def _dataset(value: str, root: Path, names: list[str] | None) -> DataSpec:
    path = Path(root, value)
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        return _yolo_yaml(value, root, names)
    if not path.is_dir():
        raise ReleaseError(f"--data {value}: no such file or folder under {root}. Give {LAYOUTS}.")
    if (path / "images").is_dir() and (path / "labels").is_dir():
        return _yolo_folder(value, root, names)
    if (path / "annotations.json").is_file() and (path / "images").is_dir():
        return _with_calibration({"eval": _coco(f"{value}/annotations.json", f"{value}/images")},
                                 f"COCO json in {value} (the eval split)")
    found = {}
    for sub in sorted(p for p in path.iterdir() if p.is_dir()):
        if sub.name in ALIASES or sub.name in SPLITS:
            name = _split_name(sub.name, value)
            if name not in found or sub.name != "test":  # val wins over test
                found[name] = _one_split(_join(value, sub.name), root, names, value)
    if not found:
        raise ReleaseError(f"--data {value}: no dataset layout recognised in that folder. Give {LAYOUTS}.")
    return _with_calibration(found, f"split folders of {value}")


def _one_split(value: str, root: Path, names: list[str] | None, flag: str) -> dict:
    """One split: a COCO json (images beside it), `JSON,IMAGES`, a folder with annotations.json or
    images/ + labels/, or a YOLO images folder."""
    if "," in value:
        annotations, _, images = value.partition(",")
        return _coco(annotations, images)
    path = Path(root, value)
    if path.suffix == ".json":
        return _coco(value, _join(str(Path(value).parent), "images"))
    if (path / "annotations.json").is_file():
        return _coco(_join(value, "annotations.json"), _join(value, "images"))
    if (path / "images").is_dir():
        value = _join(value, "images")
    if not Path(root, value).is_dir():
        raise ReleaseError(f"--data {flag}: {value} is neither a COCO json nor a folder of images under {root}.")
    return _yolo(value, _names_near(Path(root, value), root, names, flag))


def _yolo_yaml(value: str, root: Path, names: list[str] | None) -> DataSpec:
    import yaml

    try:
        doc = yaml.safe_load(Path(root, value).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ReleaseError(f"--data {value}: cannot read it as YAML ({exc}).") from None
    if not isinstance(doc, dict) or not any(k in doc for k in ("train", "val", "test")):
        raise ReleaseError(f"--data {value}: a YOLO data.yaml names its image folders under train, val or test "
                           f"(and its classes under names).")
    base = Path(value).parent / (doc.get("path") or ".")
    splits = {}
    for key in ("train", "test", "val"):  # val last: it wins eval over test
        folder = doc.get(key)
        if not folder:
            continue
        if not isinstance(folder, str) or folder.endswith(".txt"):
            raise ReleaseError(f"--data {value}: {key}: {folder!r}; only an image folder is read (not a list or "
                               f"a .txt of files): give SPLIT=FOLDER flags instead.")
        where = Path(folder) if Path(folder).is_absolute() else base / folder
        splits[_split_name(key, value)] = _yolo(_tidy(where), names or value)
    return _with_calibration(splits, f"YOLO {value}")


def _yolo_folder(value: str, root: Path, names: list[str] | None) -> DataSpec:
    images = Path(root, value, "images")
    subs = sorted(p.name for p in images.iterdir() if p.is_dir() and (p.name in ALIASES or p.name in SPLITS))
    flat = any(p.suffix.lower() in IMAGE_SUFFIXES for p in images.iterdir())
    found_names = _names_near(images, root, names, value)
    if flat or not subs:
        return _with_calibration({"eval": _yolo(_join(value, "images"), found_names)},
                                 f"YOLO images/ and labels/ of {value} (the eval split)")
    splits = {}
    for sub in sorted(subs, key=lambda s: s != "test"):  # test first: a val folder wins eval
        splits[_split_name(sub, value)] = _yolo(_join(value, "images", sub), found_names)
    return _with_calibration(splits, f"YOLO images/<split>/ and labels/<split>/ of {value}")


def _names_near(images: Path, root: Path, names: list[str] | None, flag: str) -> list[str] | str:
    """Class names: --names, else a data.yaml or classes.txt beside the images folder or up to two
    folders above it."""
    if names:
        return names
    for folder in (images, images.parent, images.parent.parent):
        for candidate in ("data.yaml", "classes.txt"):
            if (folder / candidate).is_file():
                if candidate == "classes.txt":
                    lines = (folder / candidate).read_text(encoding="utf-8").splitlines()
                    return [line.strip() for line in lines if line.strip()]
                return _tidy(_relative(folder / candidate, root))
    raise ReleaseError(f"--data {flag}: no class names found (a data.yaml or classes.txt beside the images): "
                       f"pass --names a,b,c in the order of the label files' class indices.")


def _yolo(images: str, names: list[str] | str) -> dict:
    return {"format": "yolo", "images": images, "names": names}


def _coco(annotations: str, images: str) -> dict:
    return {"annotations": _tidy(annotations), "images": _tidy(images)}


def _with_calibration(splits: dict[str, dict], described: str) -> DataSpec:
    if "eval" not in splits:
        raise ReleaseError(f"--data: {described} has no eval split (val, test or eval): every variant's mAP is "
                           f"measured on it. Add one, e.g. --data eval=PATH.")
    if "calibration" not in splits:
        calibration = dict(splits.get("train") or splits["eval"])
        calibration.pop("annotations", None)  # calibration reads images only
        splits["calibration"] = calibration
    return DataSpec({name: splits[name] for name in SPLITS if name in splits}, described)


def _join(*parts: str) -> str:
    return _tidy(Path(*parts))


def _tidy(path: str | Path) -> str:
    """A path as written in the manifest: normalised (no `./`, no `a/../`), '/'-separated."""
    return Path(os.path.normpath(str(path))).as_posix()


def _relative(path: Path, root: Path) -> Path:
    try:
        return path.relative_to(root)
    except ValueError:
        return path
