"""ONNX Runtime's quantizer as the stage calls it: the checks before, the pre-processing, and the two
quantizations with the stage's params mapped onto ORT's arguments.

Dynamic quantization always emits integer ops (DynamicQuantizeLinear + ConvInteger/MatMulInteger)
with uint8 activations; there is no QDQ form of it, which is why the stage rejects static-only
params in dynamic mode rather than ignoring them.
"""

from __future__ import annotations

QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
                 "MatMulInteger", "DynamicQuantizeLinear"}


def registry(mode: str) -> dict:
    """The op types ORT quantizes in this mode (op type -> its quantizer class)."""
    from onnxruntime.quantization.registry import IntegerOpsRegistry, QDQRegistry, QLinearOpsRegistry

    return IntegerOpsRegistry if mode == "dynamic" else {**QLinearOpsRegistry, **QDQRegistry}


def refuse_quantized(model) -> None:
    from release.errors import ReleaseError

    if found := {n.op_type for n in model.graph.node} & QUANTIZED_OPS:
        raise ReleaseError(f"quantize: the input model is already quantized (it has {sorted(found)}); "
                           "quantize an fp32 model instead.")


def preprocess(src, dst, log) -> str:
    """ORT's quant_pre_process; returns which shape inference it managed."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst))
        return "symbolic+onnx"
    except Exception as exc:  # noqa: BLE001 - sympy missing, or an op the symbolic engine can't handle
        # onnxruntime does not depend on sympy (torch brings it); ONNX shape inference alone is
        # enough for the fixed-size CNNs we export, so we degrade instead of failing the build.
        log(f"quantize: symbolic shape inference failed ({type(exc).__name__}: {exc}); using ONNX's only")
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
        return "onnx"


def single_input(model) -> tuple[str, list]:
    """The model's one input: its name and shape (None for a symbolic dimension)."""
    from release.errors import ReleaseError

    inits = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ReleaseError(f"quantize: expected a model with one input, found {[i.name for i in inputs]}")
    dims = inputs[0].type.tensor_type.shape.dim
    return inputs[0].name, [d.dim_value if d.HasField("dim_value") else None for d in dims]


def _common(p) -> dict:
    from onnxruntime.quantization import QuantType

    return dict(per_channel=p.per_channel, reduce_range=p.reduce_range,
                weight_type={"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}[p.weight_type])


def quantize_dynamic(p, src, out, op_types: list[str], excluded: list[str]) -> None:
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    ort_quantize_dynamic(str(src), str(out), op_types_to_quantize=op_types, nodes_to_exclude=excluded,
                         **_common(p))


def quantize_static(p, src, out, ranges_file, op_types: list[str], excluded: list[str]) -> None:
    """Static quantization with the ranges in `ranges_file` (see calibration.ranges)."""
    from onnxruntime.quantization import QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    from release.stages.quantize import calibration

    ort_quantize_static(str(src), str(out), None, calibration_cache_path=str(ranges_file),
                        calibrate_method=calibration.method(p), op_types_to_quantize=op_types,
                        nodes_to_exclude=excluded,
                        quant_format=QuantFormat.QDQ if p.format == "qdq" else QuantFormat.QOperator,
                        activation_type={"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}[p.activation_type],
                        **_common(p))
