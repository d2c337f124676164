"""distill: teacher weights -> a smaller student trained to reproduce the teacher's head outputs.

The teacher is this stage's input (the stripped source, typically). The student comes from its own
builder and kwargs (e.g. the same detector at half width) and must produce outputs of the teacher's
shapes, which the `check` task verifies before any training. The loss is the adapter's
`distill_loss(student_outputs, teacher_outputs)` when it has one (it knows what the heads mean),
else a mean squared error per output; plus the ground-truth loss where labels exist. With
`labels: false` only images are read.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from release.stages.base import StageContext, StageParams, StageSpec, hook
from release.training import TrainParams
from release.usercode import IMPORT_PATH

SPEC = StageSpec(
    name="distill", version=1, consumes="weights", produces="weights", uses_model=True, reads=("train",),
    code=("release.training", "release.optim", "release.data", "release.surgery", "release.weights", "release.analysis"),
    no_labels_hint=" (or set labels: false)",
    summary="train a smaller student against the teacher's head outputs (+ ground truth)",
    tools=("torch", "torch-pruning", "safetensors"),
)


class Student(StageParams):
    builder: str | None = Field(None, pattern=IMPORT_PATH,
                                description="package.module:function; default: the manifest's model.builder")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="the student's builder kwargs")


class Params(TrainParams):
    student: Student = Field(description="the network to train: {builder, kwargs}")
    steps: int = Field(1000, gt=0, description="optimizer steps")
    lr: float = Field(1e-2, gt=0, lt=1, description="peak learning rate (AdamW); a student starts from scratch")
    warmup_steps: int = Field(100, ge=0, description="linear warm-up from 5% of lr")
    init: Literal["random", "teacher"] = Field(
        "random", description="the student's starting weights: random, or the teacher's narrowed to the "
                              "student's widths (most important channels kept; needs a student that is a "
                              "narrower copy of the teacher, e.g. the same builder at a smaller width)")
    labels: bool = Field(True, description="add the ground-truth loss (false: images only, no annotations read)")
    distill_weight: float = Field(1.0, ge=0, description="weight of the teacher-matching loss (0: no teacher)")
    gt_weight: float = Field(1.0, ge=0, description="weight of the ground-truth loss (with labels)")

    @model_validator(mode="after")
    def _some_loss(self):
        if self.distill_weight == 0 and not (self.labels and self.gt_weight > 0):
            raise ValueError("nothing to learn from: distill_weight is 0 and there is no ground-truth loss "
                             "(labels: false or gt_weight: 0)")
        return self


@hook
def needs_labels(params, split) -> bool:
    return params.labels and params.gt_weight > 0


@hook
def code_refs(params) -> list[str]:
    return [params.student.builder] if params.student.builder else []


def _student_builder(params, manifest) -> str:
    return params.student.builder or manifest.model.builder


def build_student(params, manifest):
    from release.errors import ReleaseError
    from release.usercode import import_object

    builder = import_object(_student_builder(params, manifest), "student.builder")
    try:
        return builder(**params.student.kwargs)
    except Exception as exc:  # noqa: BLE001 - the user's builder failed: say where, not a traceback
        raise ReleaseError(f"student.kwargs: the student's builder failed with these kwargs: "
                           f"{type(exc).__name__}: {exc}") from None


@hook
def next_model(params, manifest, model):
    """The steps after distill (their checks) receive the student, not the teacher."""
    return build_student(params, manifest)


@hook
def check(params, manifest, model) -> list[tuple[tuple, str]]:
    from release.errors import ReleaseError
    from release.analysis import output_shapes
    from release.usercode import load_adapter

    problems = []
    try:
        student = build_student(params, manifest).eval()
    except ReleaseError as exc:
        field, _, message = str(exc).partition(": ")
        return [(tuple(field.split(".")), message)]
    t_shapes = output_shapes(model, manifest.model.input_shape)
    try:
        s_shapes = output_shapes(student, manifest.model.input_shape)
    except Exception as exc:  # noqa: BLE001 - a student that cannot take the model's input
        return [(("student",), f"the student fails on an input of model.input_shape "
                               f"{list(manifest.model.input_shape)}: {type(exc).__name__}: {exc}")]
    if t_shapes != s_shapes:
        problems.append((("student",), f"the student's outputs {s_shapes} do not match the teacher's {t_shapes}; "
                                       f"distillation compares them one to one. Give the student the teacher's "
                                       f"heads (same number of classes and output strides)."))
    if not problems and params.init == "teacher":
        import copy

        from release.surgery import narrow_like

        try:
            narrow_like(copy.deepcopy(model), student, manifest.model.input_shape)
        except ReleaseError as exc:
            problems.append((("init",), f"init: teacher: {exc}. Use init: random for this student."))
    adapter = load_adapter(manifest.model)
    if params.labels and params.gt_weight > 0 and not callable(getattr(adapter, "loss", None)):
        problems.append((("labels",), f"model.adapter {manifest.model.adapter} has no loss(outputs, targets) for "
                                      f"the ground-truth part; set labels: false, or add the loss."))
    return problems


def _mse(student, teacher) -> dict:
    import torch

    parts = {f"mse{i}": torch.nn.functional.mse_loss(s, t) for i, (s, t) in enumerate(zip(student, teacher))}
    return {**parts, "loss": sum(parts.values())}


def run(ctx: StageContext) -> dict:
    import torch

    from release.errors import ManifestError
    from release.analysis import complexity
    from release.usercode import load_adapter
    from release.weights import load_weights, save_weights
    from release.training import fit, load_train_set

    spec, p = ctx.manifest.model, ctx.params
    teacher = load_weights(spec, ctx.input).eval()
    problems = check(p, ctx.manifest, teacher)
    if problems:
        raise ManifestError(f"{ctx.manifest.path}: distill: " + "; ".join(m for _, m in problems))
    for q in teacher.parameters():
        q.requires_grad_(False)
    adapter = load_adapter(spec)
    kd = getattr(adapter, "distill_loss", None) or _mse
    use_labels = p.labels and p.gt_weight > 0
    data = load_train_set(ctx.manifest.data.train, adapter, labels=use_labels)
    torch.manual_seed(p.seed)  # the student's initial weights
    student = build_student(p, ctx.manifest)
    if p.init == "teacher":
        import copy

        from release.surgery import narrow_like

        start = copy.deepcopy(teacher).to(memory_format=torch.contiguous_format)
        narrow_like(start, student, spec.input_shape)
        student.load_state_dict(start.state_dict())
        del start
    teacher = teacher.to(memory_format=torch.channels_last)

    def loss_fn(net, x, targets):
        outputs = net(x)
        parts = {}
        if p.distill_weight > 0:
            with torch.no_grad():
                reference = teacher(x)
            parts = {f"kd_{k}": v for k, v in kd(outputs, reference).items()}
        if use_labels:
            parts.update({f"gt_{k}": v for k, v in adapter.loss(outputs, targets).items()})
        total = p.distill_weight * parts.get("kd_loss", 0.0) + p.gt_weight * parts.get("gt_loss", 0.0)
        return {**{k: v for k, v in parts.items() if k not in ("kd_loss", "gt_loss")}, "loss": total}

    trained, facts = fit(student, data, p, loss_fn, resume=ctx.resume, key=ctx.fingerprint, label="distill",
                         progress=ctx.progress, log=ctx.log)
    save_weights(trained, ctx.output, builder=_student_builder(p, ctx.manifest), kwargs=p.student.kwargs)
    before, after = complexity(teacher, spec.input_shape), complexity(trained, spec.input_shape)
    ctx.log(f"distill: student {after['parameters']:,} parameters ({after['macs'] / 1e6:.1f} M MACs) from teacher "
            f"{before['parameters']:,} ({before['macs'] / 1e6:.1f} M); loss {facts['loss_start']:.3f} -> "
            f"{facts['loss_final']:.3f}")
    return {**facts, "teacher": before, "before": before, "after": after, "parameters": after["parameters"],
            "macs": after["macs"], "loss": "adapter.distill_loss" if kd is not _mse else "mse per output",
            "labels": use_labels, "init": p.init}
