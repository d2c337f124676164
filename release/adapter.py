"""The contract between the build system and a model family, and the check of a user's adapter against it.

The build system knows nothing about detector heads. An adapter (named in the manifest as
`model.adapter: package.module:Class`) owns what is specific to one family: how an image becomes the
network input, how raw outputs become boxes, and the training loss. The same pre- and
post-processing run in PyTorch and on ONNX Runtime outputs, so the model that ships is the model
that is scored.

    adapter = Adapter(input_shape=(1, 3, H, W), **model.adapter_kwargs)
    x, meta = adapter.preprocess(image_rgb_uint8)        # (3, H, W) float32, dict
    dets = adapter.postprocess([out0, out1, ...], meta)  # outputs for ONE image (batch dim 1)
    # dets: (N, 6) float array: x, y, w, h (original image pixels), score, class index
    boxes = adapter.boxes_to_input(boxes_xywh, meta)     # original pixels -> network-input pixels
    losses = adapter.loss(outputs, targets)              # torch; dict with a 'loss' entry
    # targets: list (one per image) of dicts {"boxes": (N,4) xywh in network-input pixels,
    #                                          "labels": (N,) class indices}
    losses = adapter.distill_loss(student_outputs, teacher_outputs)  # optional, as loss

`output_names` (a list of str) names the ONNX outputs.

The protocols below are the one declaration of that contract: `Adapter` holds what every build
calls, `TrainingAdapter` and `DistillAdapter` what only some stages call (finetune and distill check
for those themselves, and distill falls back to a mean squared error without `distill_loss`). The
check (`problems`) reads its member names and parameter lists from them, so the two cannot drift.
This module imports nothing heavy: the check runs before any model code does.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Protocol

from release.errors import closest

if TYPE_CHECKING:
    import numpy as np


class Adapter(Protocol):
    """What every build calls: export names the outputs, evaluation and calibration pre- and
    post-process, and training stages map the annotated boxes into the network input."""

    output_names: list[str]

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, dict]: ...

    def postprocess(self, outputs: list[np.ndarray], meta: dict) -> np.ndarray: ...

    def boxes_to_input(self, boxes: np.ndarray, meta: dict) -> np.ndarray: ...


class TrainingAdapter(Adapter, Protocol):
    """What finetune (and distill with labels) call besides: the loss of training-mode outputs."""

    def loss(self, outputs: Any, targets: list[dict]) -> dict: ...


class DistillAdapter(Adapter, Protocol):
    """What distill calls when the adapter has it: matching the teacher's heads (else an MSE)."""

    def distill_loss(self, student_outputs: Any, teacher_outputs: Any) -> dict: ...


def _methods(protocol: type) -> dict[str, tuple[str, ...]]:
    """The methods a protocol declares itself -> the parameter names the build passes (no self)."""
    return {name: tuple(inspect.signature(fn).parameters)[1:] for name, fn in vars(protocol).items()
            if inspect.isfunction(fn) and not name.startswith("_")}


# name -> parameter names, in declaration order
REQUIRED: dict[str, tuple[str, ...]] = _methods(Adapter)
OPTIONAL: dict[str, tuple[str, ...]] = {**_methods(TrainingAdapter), **_methods(DistillAdapter)}
ATTRIBUTES: tuple[str, ...] = tuple(Adapter.__annotations__)  # output_names
NEEDS = (f"an adapter needs {', '.join(REQUIRED)} and {', '.join(ATTRIBUTES)}"
         f" ({', '.join(OPTIONAL)} optional, for training): see release/adapter.py")
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def call(name: str) -> str:
    """'postprocess(outputs, meta)': how the build calls a method of the protocol."""
    return f"{name}({', '.join({**REQUIRED, **OPTIONAL}[name])})"


def problems(adapter: Any) -> list[str]:
    """What is missing or wrong in an adapter, each as a phrase to follow its name ('has no ...').

    Given a class, only the methods it defines are judged (their parameters), since `__init__` may
    still set the rest (`self.preprocess = inner.preprocess`, `self.output_names = [...]`); given an
    instance, everything is. A check of both, before and after instantiation, reports a wrong
    signature before `__init__` runs and a missing member after it.
    """
    if isinstance(adapter, type):
        return [p for name in {**REQUIRED, **OPTIONAL} if (p := _class_method_problem(adapter, name))]
    found = [p for name in REQUIRED if (p := _method_problem(adapter, name, required=True))]
    found += [p for name in OPTIONAL if (p := _method_problem(adapter, name, required=False))]
    return found + [p for name in ATTRIBUTES if (p := _names_problem(adapter, name))]


def _class_method_problem(cls: type, name: str) -> str | None:
    """A method defined on the class whose parameters do not fit the call; None otherwise
    (properties and plain attributes are left to the instance check)."""
    try:
        raw = inspect.getattr_static(cls, name)
    except AttributeError:
        return None
    if isinstance(raw, staticmethod):
        fn, drop_self = raw.__func__, False
    elif isinstance(raw, classmethod):
        fn, drop_self = raw.__func__, True
    elif inspect.isfunction(raw):
        fn, drop_self = raw, True
    else:
        return None
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    if drop_self:
        if params and params[0].kind in _POSITIONAL:
            params = params[1:]
        elif not any(p.kind == inspect.Parameter.VAR_POSITIONAL for p in params):
            return f"has {name}() without self: a method is called as adapter.{call(name)}"
    return _arity_problem(name, params)


def _method_problem(adapter: Any, name: str, required: bool) -> str | None:
    """A method of the protocol that the instance lacks, cannot call, or would call wrongly."""
    member = getattr(adapter, name, None)
    if member is None:
        return _missing(adapter, name, required)
    if not callable(member):
        return f"has {name} = {_short(member)} ({kind_of(member)}), not a method {call(name)}"
    try:
        params = list(inspect.signature(member).parameters.values())
    except (TypeError, ValueError):
        return None  # a builtin or C callable: nothing to read, trust it
    return _arity_problem(name, params)


def _missing(adapter: Any, name: str, required: bool) -> str | None:
    """A missing required method; a missing optional one only when a near-miss spelling exists,
    since the build would otherwise silently go without it."""
    others = [n for n in dir(adapter) if not n.startswith("_") and n not in REQUIRED and n not in OPTIONAL
              and n not in ATTRIBUTES]
    if required:
        match = closest(name, others)
        hint = f" (did you mean {match[0]}?)" if match else ""
        return f"has no method {call(name)}{hint}"
    match = [n for n in closest(name, others, cutoff=0.85) if callable(getattr(adapter, n, None))]
    if match:
        return (f"has {match[0]} but no {call(name)} (a misspelling? the build calls {name} only when "
                f"it exists, and goes without it otherwise)")
    return None


def _arity_problem(name: str, params: list[inspect.Parameter]) -> str | None:
    """Parameters (self removed) that cannot take the build's call: too few positional ones (a
    *args takes any number), or ones without a default that the call never fills."""
    expected = {**REQUIRED, **OPTIONAL}[name]
    positional = [p for p in params if p.kind in _POSITIONAL]
    signature = f"{name}({', '.join(str(p) for p in params)})"
    if len(positional) < len(expected) and not any(p.kind == inspect.Parameter.VAR_POSITIONAL for p in params):
        count = f"{len(positional)} argument{'s' if len(positional) != 1 else ''}"
        return f"has {signature}, which takes {count}, but the build calls {call(name)}"
    unfilled = [p.name for p in positional[len(expected):] if p.default is p.empty]
    unfilled += [p.name for p in params if p.kind == inspect.Parameter.KEYWORD_ONLY and p.default is p.empty]
    if unfilled:
        return (f"has {signature}, but the build calls {call(name)} and never passes "
                f"{', '.join(unfilled)}: give {'them' if len(unfilled) > 1 else 'it'} a default, or take "
                f"{'them' if len(unfilled) > 1 else 'it'} in __init__ from model.adapter_kwargs")
    return None


def _names_problem(adapter: Any, name: str) -> str | None:
    """output_names must be a non-empty list of distinct str: export names the ONNX outputs with it
    (a lone str would be split into letters)."""
    value = getattr(adapter, name, None)
    if value is None:
        return f"has no {name} (a list of str naming the ONNX outputs; set it on the class or in __init__)"
    if (not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) for v in value)
            or len(set(value)) != len(value)):
        return f"has {name} = {_short(value)} ({kind_of(value)}), not a non-empty list of distinct str"
    return None


def kind_of(value: Any) -> str:
    """'a function', 'an int', 'a str', 'a list', 'an instance of Foo': for messages."""
    if inspect.isfunction(value) or inspect.isbuiltin(value):
        return "a function"
    if inspect.ismodule(value):
        return "a module"
    if isinstance(value, type):
        return "a class"
    name = type(value).__name__
    if type(value).__module__ == "builtins":
        return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"
    return f"an instance of {name}"


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
