"""Measurements of the artifact that ships: size, latency and COCO mAP of the ONNX file."""


def input_dtype(session):
    """The numpy dtype an ONNX Runtime session's first input wants (fp16 models may take float16)."""
    import numpy as np

    kind = session.get_inputs()[0].type
    return {"tensor(float16)": np.float16, "tensor(double)": np.float64}.get(kind, np.float32)
