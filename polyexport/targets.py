"""The targets polyexport ships to (torch-free: the CLI's verify/check paths import it)."""

TARGETS = ("onnx", "onnxruntime", "openvino", "tensorrt")
