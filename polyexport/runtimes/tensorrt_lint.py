"""What TensorRT's ONNX parser will refuse, found statically, before a build (no tensorrt import).

Rules come from onnx-tensorrt's operator support matrix for each release (docs/operators.md on the
8.5-GA, 8.6-GA, 10.0-GA and 10.1-GA branches) and its importers: the restrictions that bite the layers
polyexport converts are convolution weights computed at run time, the batch folded into a Conv's
`group`, INT64 shape arithmetic, Resize modes, and inputs that must be build-time constants. Each
finding names the PyTorch module its node came from (scopes.module_of_node).

Versions are the ones JetPack ships: 8.5 (JetPack 5.1), 8.6 (JetPack 6.0), 10.3 (JetPack 6.1/6.2). Any
"8.5", "8.6.2", "10", "10.3"… is accepted and mapped to its rule set (`rules_for`); all 10.x share one,
with 10.0/10.1's documented opset range (9-20; later 10.x parse more, so this errs on the strict side).
"""
from __future__ import annotations

from dataclasses import dataclass

import onnx

from ..scopes import module_of_node

VERSIONS = ("8.5", "8.6", "10")  # rule sets: JetPack 5.1 ships 8.5, JetPack 6.0 8.6, JetPack 6.1/6.2 10.3
DEFAULT_VERSIONS = ("8.6", "10")  # what `polyexport check` checks unless told
#: operators.md: "TensorRT 8.5/8.6 supports operators up to Opset 17" (and back to 7, the developer guide);
#: "TensorRT 10.0 supports operators in the inclusive range of opset 9 to opset 20" (10.1-GA says the same)
MAX_OPSET = {"8.5": 17, "8.6": 17, "10": 20}
MIN_OPSET = {"8.5": 7, "8.6": 7, "10": 9}

_UNSUPPORTED_COMMON = {
    "Bernoulli", "BitShift", "BlackmanWindow", "Compress", "ConcatFromSequence", "ConvInteger", "DFT", "Det",
    "DynamicQuantizeLinear", "HammingWindow", "HannWindow", "MatMulInteger", "MaxRoiPool", "MaxUnpool",
    "MelWeightMatrix", "Multinomial", "NegativeLogLikelihoodLoss", "Optional", "OptionalGetElement",
    "OptionalHasElement", "QLinearConv", "QLinearMatMul", "STFT", "SequenceAt", "SequenceConstruct",
    "SequenceEmpty", "SequenceErase", "SequenceInsert", "SequenceLength", "SequenceMap",
    "SoftmaxCrossEntropyLoss", "SplitToSequence", "StringNormalizer", "TfIdfVectorizer", "Unique",
}
UNSUPPORTED = {
    # 8.5 also lacks LayerNormalization (what torch exports nn.LayerNorm as from opset 17) and IsInf
    "8.5": _UNSUPPORTED_COMMON | {"Hardmax", "IsInf", "LayerNormalization"},
    "8.6": _UNSUPPORTED_COMMON | {"Hardmax"},
    "10": _UNSUPPORTED_COMMON | {"AffineGrid", "BitwiseAnd", "BitwiseNot", "BitwiseOr", "BitwiseXor", "Col2Im",
                                 "CenterCropPad", "ImageDecoder", "RegexFullMatch", "StringConcat", "StringSplit"},
}
RESIZE_COORD = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
RESIZE_MODE = {"nearest", "linear"}
RESIZE_NEAREST = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}
#: (op, input index) that the parser needs as a build-time constant
CONSTANT_INPUTS = {("Slice", 3): "axes", ("Squeeze", 1): "axes", ("Unsqueeze", 1): "axes", ("TopK", 1): "K",
                   ("CumSum", 1): "axis", ("ReduceSum", 1): "axes", ("OneHot", 1): "depth"}


def rules_for(version: str) -> str:
    """The rule set for a TensorRT version string: "8.5", "8.5.2" -> "8.5"; "8.6", "8.6.2" -> "8.6";
    "10", "10.3", "10.3.0" -> "10". ValueError for anything else (older, 9.x, or not a version)."""
    parts = str(version).strip().lower().lstrip("v").split(".")
    if not parts or not all(p.isdigit() for p in parts if p) or not parts[0]:
        raise ValueError(f"TensorRT version {version!r}: not a version number (e.g. 8.5, 8.6, 10, 10.3)")
    major, minor = int(parts[0]), int(parts[1]) if len(parts) > 1 and parts[1] else None
    if major == 10:
        return "10"
    if major == 8 and minor in (5, 6):
        return f"8.{minor}"
    raise ValueError(f"TensorRT version {version!r}: polyexport checks 8.5, 8.6 and 10.x (what JetPack 5.1, 6.0 and 6.1/6.2 ship)")


@dataclass
class Finding:
    severity: str  # "error" (the parse or build fails) | "warning" (works, with a cost) | "info"
    rule: str
    node: str
    op: str
    message: str
    module: str | None = None  # the PyTorch module the node came from (its scope), where the name tells

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def where(self) -> str:
        """'node (Op)', with ', module m' where known: the line a user greps for."""
        if not self.node:
            return "graph"
        return f"{self.node} ({self.op}" + (f", module {self.module})" if self.module else ")")


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            v = onnx.helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else v
    return default


def lint_tensorrt(model: onnx.ModelProto | str, version: str = "8.6") -> list[Finding]:
    """Findings for `model` against TensorRT `version` ("8.5", "8.6", "10", "10.3", …: rules_for), most severe
    first, each naming its node's PyTorch module where the node name carries one."""
    label = str(version).strip()
    version = rules_for(label)
    if isinstance(model, str):
        model = onnx.load(model)
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - the lint still runs on what it has
        pass
    g = model.graph
    graph = _Graph({i.name for i in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output},
                   {v.name: v.type.tensor_type for v in [*g.value_info, *g.input, *g.output]},
                   any(i.type.tensor_type.shape.dim and i.type.tensor_type.shape.dim[0].dim_param for i in g.input))
    out = _opset_findings(model, version, label)
    for node in g.node:
        out += _node_findings(node, graph, version, label)
    for f in out:
        f.module = module_of_node(f.node) if f.node else None
    order = {"error": 0, "warning": 1, "info": 2}
    return sorted(out, key=lambda f: order[f.severity])


@dataclass
class _Graph:
    constants: set  # initializers and Constant outputs
    types: dict  # value name -> its tensor type
    batch_dynamic: bool


def _opset_findings(model: onnx.ModelProto, version: str, label: str) -> list[Finding]:
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if MIN_OPSET[version] <= opset <= MAX_OPSET[version]:
        return []
    return [Finding("error", "opset", "", "", f"opset {opset}: TensorRT {label} parses opsets {MIN_OPSET[version]}–{MAX_OPSET[version]} "
                    f"(re-export with --opset {min(max(opset, MIN_OPSET[version]), MAX_OPSET[version])})")]


def _node_findings(node: onnx.NodeProto, graph: _Graph, version: str, label: str) -> list[Finding]:
    name, op = node.name or (node.output[0] if node.output else "?"), node.op_type
    if node.domain not in ("", "ai.onnx"):
        return [Finding("error", "custom-op", name, op, f"custom domain '{node.domain}': needs a TensorRT plugin")]
    out = []
    if op in UNSUPPORTED[version]:
        out.append(Finding("error", "unsupported-op", name, op, f"{op} is not supported by TensorRT {label}'s ONNX parser"))
    if op in ("Conv", "ConvTranspose") and len(node.input) > 1 and node.input[1] not in graph.constants:
        out += _runtime_weight_findings(node, name, op, graph)
    if op == "Resize":
        out += _resize_findings(node, name, op)
    for (cop, idx), what in CONSTANT_INPUTS.items():
        if op == cop and len(node.input) > idx and node.input[idx] and node.input[idx] not in graph.constants:
            out.append(Finding("error", "needs-constant", name, op, f"{op}'s `{what}` must be a build-time constant"))
    if version in ("8.5", "8.6"):
        for o in node.output:
            t = graph.types.get(o)
            if t is not None and t.elem_type == onnx.TensorProto.INT64 and op not in ("Shape", "Constant"):
                out.append(Finding("info", "int64", name, op, f"INT64 tensor: TensorRT {label} casts it to INT32 (values beyond ±2³¹ clamp)"))
                break
    return out


def _runtime_weight_findings(node: onnx.NodeProto, name: str, op: str, graph: _Graph) -> list[Finding]:
    out = []
    group = _attr(node, "group", 1)
    x_shape = graph.types.get(node.input[0])
    first = x_shape.shape.dim[0].dim_value if x_shape is not None and x_shape.shape.dim else 0
    if group > 1 and first == 1:
        out.append(Finding("error", "batch-in-group", name, op,
                           f"per-sample weights with the batch folded into group={group}: the engine runs only the exported batch size"
                           + (" (and the graph has a dynamic batch axis)" if graph.batch_dynamic else "")))
    out.append(Finding("warning", "dynamic-conv-weights", name, op,
                       "convolution weights computed at run time: rejected by TensorRT's parser before 8.5; accepted since as a kernel "
                       "input with a build-time-constant shape, without weight-specialised tactics (use a constant-weight deploy form)"))
    return out


def _resize_findings(node: onnx.NodeProto, name: str, op: str) -> list[Finding]:
    mode, coord = _attr(node, "mode", "nearest"), _attr(node, "coordinate_transformation_mode", "half_pixel")
    nearest = _attr(node, "nearest_mode", "round_prefer_floor")
    out = []
    if mode not in RESIZE_MODE:
        out.append(Finding("error", "resize-mode", name, op, f"Resize mode '{mode}' (TensorRT supports {sorted(RESIZE_MODE)})"))
    if coord not in RESIZE_COORD:
        out.append(Finding("error", "resize-coordinates", name, op, f"coordinate_transformation_mode '{coord}' is not supported"))
    if mode == "nearest" and nearest not in RESIZE_NEAREST:
        out.append(Finding("error", "resize-nearest", name, op, f"nearest_mode '{nearest}' is not supported"))
    if _attr(node, "antialias", 0):
        out.append(Finding("error", "resize-antialias", name, op, "antialiasing is not supported"))
    return out
