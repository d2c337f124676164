"""Model families shipped with the tool: the demo detector and torchvision's detectors. Nothing in the
pipeline imports these; a manifest names them like any user model (model.builder / model.adapter)."""
