"""The demo manifest, embedded in the package for `release init --template demo`: the same text as
this repository's recipes/rpi_detector.yaml (a test keeps the two equal)."""

MANIFEST = '''\
# The embedded default: a shapes detector released for a Raspberry Pi 4.
# Paths are relative to the project root. The generate section makes the data and trains the
# checkpoint as part of the build, so this manifest runs on a fresh clone with no downloads.
schema_version: 1
name: rpi_detector
version: 1.0.0

source:
  checkpoint: artifacts/demo/train_last.ckpt   # a Lightning-style training checkpoint (see generate)
  format: auto
  weights: auto                                # the EMA copy when there is one
  drop: ["aux_head.*"]                         # training-only auxiliary head
  trusted: false

model:
  builder: release.models.demo.detector:build
  kwargs: {num_classes: 3, width: 1.0}
  adapter: release.models.demo.detector:Adapter
  input_shape: [1, 3, 128, 128]

data:
  train: {annotations: artifacts/demo/data/train/annotations.json, images: artifacts/demo/data/train/images}
  calibration: {annotations: artifacts/demo/data/calibration/annotations.json, images: artifacts/demo/data/calibration/images}
  eval: {annotations: artifacts/demo/data/eval/annotations.json, images: artifacts/demo/data/eval/images}

generate:             # tasks that make the build's inputs before anything reads them, in order
  data:               # the synthetic shapes dataset: <out>/<split>/annotations.json and images/
    run: release.models.demo.generate:data
    kwargs: {seed: 0, image_size: 128, train_images: 3000, calibration_images: 64, eval_images: 300}
    out: artifacts/demo/data
  checkpoint:         # the demo detector (model.kwargs) trained on that data
    run: release.models.demo.generate:checkpoint
    kwargs: {data: artifacts/demo/data, image_size: 128, steps: 1600, batch_size: 16, lr: 0.012, seed: 0}
    out: artifacts/demo/train_last.ckpt
    after: [data]

target:
  name: rpi4          # built-in profile: Raspberry Pi 4, 4x Cortex-A72, measured with 4 threads
  runner: local       # measured on this build host, and every figure says so; to measure on the Pi
                      # itself: runner: ssh://pi@raspberrypi.local (see README "Target devices")

budget:               # chosen from measured figures: see README "Budgets"
  size_mb: 1.0
  latency_ms: 5.0
  min_map: 0.55

variants:
  fp32:        [strip, export]
  fp16:        [strip, export, fp16]
  int8_dynamic: [strip, export, {quantize: {mode: dynamic}}]
  int8_qdq:    [strip, export, {quantize: {mode: static, format: qdq}}]
  int8_qop:    [strip, export, {quantize: {mode: static, format: qoperator}}]
  # INT8 whose most error-adding layer groups fall back to float until the mAP on the calibration
  # split (never data.eval) is within 0.01 of fp32. Every INT8 variant keeps each output's decode
  # tail in float (keep_float: auto, the default). See README "INT8 for detectors".
  int8_tuned:  [strip, export, {quantize: {mode: static, format: qdq, max_map_drop: 0.01}}]
  # Channel pruning (30% of every layer's channels; the heads' output layers are kept), then
  # fine-tuning to win back the accuracy; shipped as fp32 and as static INT8. YAML anchors (&name,
  # *name) reuse a step: equal steps are one task anyway. See README "Pruned and distilled variants".
  pruned:      [strip, &prune {prune: {method: channel, amount: 0.3}},
                &finetune {finetune: {steps: 500, lr: 0.003}}, export]
  pruned_int8: [strip, *prune, *finetune, export, {quantize: {mode: static, format: qdq}}]
  # A half-width student, started from the teacher's most important channels and trained against
  # the teacher's heads plus the labels.
  distilled:   [strip, &distill {distill: {student: {kwargs: {num_classes: 3, width: 0.5}}, init: teacher,
                                           steps: 800, lr: 0.003, warmup_steps: 50}}, export]
  distilled_int8: [strip, *distill, export, {quantize: {mode: static, format: qdq}}]

select: best_map
'''
