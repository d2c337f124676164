"""COCO mAP of an ONNX model through ONNX Runtime, with the adapter's pre- and post-processing."""

from __future__ import annotations

import contextlib
import io
import time
from pathlib import Path

from release.measure import input_dtype


def evaluate(onnx_path: Path, model_spec, eval_ref, progress: bool = False, split: str = "eval") -> dict:
    """mAP@[.5:.95] and mAP@.5 of the ONNX file on a split (pycocotools, bbox), and its class names."""
    import onnxruntime as ort
    from tqdm import tqdm

    from release.data import open_split
    from release.usercode import load_adapter

    started = time.perf_counter()
    data = open_split(eval_ref, split=split, labels=True)  # COCO json, YOLO txt or VOC xml
    adapter = load_adapter(model_spec)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    input_name, dtype = session.get_inputs()[0].name, input_dtype(session)
    cat_ids = data.category_ids
    results = []
    for record in tqdm(data.images, desc="mAP", disable=not progress, leave=False):
        x, meta = adapter.preprocess(data.read_image(record))
        outputs = session.run(None, {input_name: x[None].astype(dtype)})
        for x0, y0, w, h, conf, cls in adapter.postprocess(outputs, meta):
            results.append({"image_id": record.id, "category_id": cat_ids[int(cls)],
                            "bbox": [float(x0), float(y0), float(w), float(h)], "score": float(conf)})
    stats = score(data, results)
    return {"map": stats[0], "map50": stats[1], "map75": stats[2], "images": len(data.images),
            "detections": len(results), "seconds": round(time.perf_counter() - started, 3),
            "classes": [c["name"] for c in data.categories]}  # in the model's output order (class index)


def score(data, results: list[dict]) -> list[float]:
    """pycocotools' 12 bbox statistics of detections (COCO result dicts: image_id, category_id,
    bbox x, y, w, h in pixels, score) against a split's ground truth (release.data.CocoSplit)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its tables
        truth = COCO()
        truth.dataset = data.coco_dict()
        truth.createIndex()
        stats = [0.0] * 12
        if results:
            found = truth.loadRes(results)
            evaluator = COCOeval(truth, found, "bbox")
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
            stats = [max(0.0, float(s)) for s in evaluator.stats]  # -1 means "no such objects"
    return stats
