"""The targets polyexport ships to (torch-free: the CLI's verify/check paths import it)."""

TARGETS = ("onnx", "onnxruntime", "openvino", "tensorrt")

#: how forms are chosen (`--form`): auto (timed on the target, the whole-model check limited to the closest
#: alternatives, forms measured far behind everywhere left untimed: form_prior.py), thorough (every form timed, and the
#: whole-model check times every plausible alternative: slower, for the last few
#: per cent), preferred (the registered order, nothing timed)
FORM_CHOICES = ("auto", "thorough", "preferred")
