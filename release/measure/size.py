"""Size of a deployable ONNX model: every file it needs at run time, external data included."""

from __future__ import annotations

from pathlib import Path

MB = 1_000_000  # budgets are in MB = 10^6 bytes, as on a spec sheet


def model_files(path: Path) -> list[Path]:
    """The ONNX file and every external-data file it references."""
    import onnx

    path = Path(path)
    proto = onnx.load(str(path), load_external_data=False)
    files = {path}
    for tensor in _tensors(proto.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    files.add(path.parent / entry.value)
    return sorted(files)


def _tensors(graph):
    """Every TensorProto in a graph: initializers and attribute tensors, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _tensors(sub)


def zipped_bytes(files: list[Path]) -> int:
    """Size after DEFLATE (zip's default level 6), streamed: what a sparse model saves on the
    wire and on a compressed filesystem, although the file itself does not shrink."""
    import zlib

    total = 0
    for f in files:
        packer = zlib.compressobj(6)
        with open(f, "rb") as handle:
            while chunk := handle.read(1 << 20):
                total += len(packer.compress(chunk))
        total += len(packer.flush())
    return total


def measure(path: Path) -> dict:
    files = model_files(path)
    total = sum(f.stat().st_size for f in files)
    zipped = zipped_bytes(files)
    return {"bytes": total, "size_mb": total / MB, "zipped_bytes": zipped, "zipped_mb": zipped / MB,
            "files": [f.name for f in files]}

