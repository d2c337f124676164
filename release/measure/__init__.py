"""Measurements of the artifact that ships: size, latency and COCO mAP of the ONNX file."""
