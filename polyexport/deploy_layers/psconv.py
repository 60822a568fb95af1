"""Deploy forms of PSConv (`PSConv2d`, `PSGConv2d`): the three convs and the channel half swap, rewritten.

Exported as it is, PSConv is three convs, a Split/Concat half swap of the input and two Adds. Every
branch is linear in x and shares the stride, so branches that sample the same offsets merge into
one conv by adding their (zero-embedded) weights, and a permutation of the input channels folds
into the weights of the conv that reads them. The forms (all dynamic batch, constant weights):

- "masked": exact only for weights the way official training leaves them (`conv.weight` zero where
  the grouped convs act), checked on the weights. With parts=4 what is left of `conv` links output
  groups {0, 2} only to input groups {1, 3} and vice versa: a 2-group conv on x with its channels
  gathered (Gather in, Gather out), plus `gwconv` and the regrouped shift conv below: 1.0× the FLOPs
  of a plain conv (the paper's "no overhead"), three Gathers. With parts=2 `conv` is all zero: dropped.
- "regrouped": `conv` and `gwconv` merged into one conv (they share geometry when dilation is 1; at
  dilation > 1 they stay two convs) + `gwconv_shift` as a grouped conv on x itself. The half swap
  maps the shift conv's input groups onto groups (when each half holds whole groups: `parts` even),
  so group g of the shift reads x's group σ(g): a grouped conv whose group σ(g) carries group g's
  weights computes the same outputs in σ order, put back in place by one constant Gather on its
  output. FLOPs: (1 + 1/parts)× a plain conv at dilation 1, (1 + 2/parts)× (as the reference) above.
- "shift_dense": the merged conv + the shift conv made dense within `groups` (block-sparse weights,
  the half swap folded into its input channels): no Gather; 2× FLOPs at dilation 1 (2.25× above). Exact
  for every geometry, including odd `parts` where the halves cut groups.
- "dense": one conv whose kernel covers every branch's taps (dilation 1, kernel 4d+1, e.g. 5×5 at
  dilation 1): one op, (4d+1)²/k² × FLOPs (2.8× at d=1).

Measured (2 cores, ORT and OpenVINO, batch 1, official PS-ResNet config parts 4, dilation 2): masked
1.03–1.38× a plain 3×3 conv, regrouped ≈ the reference (1.5–1.8×), shift_dense 2–6×; preference in
that order (dense last). A BN after the layer folds into any of them (`fuse_bn`).

Where the reference's branches disagree on the output size (a padding other than what the grouped
convs imply, e.g. 3×3 with padding 0), the reference only works through broadcasting on degenerate
sizes: no form claims it. A 'same' padding of `conv` is read (and rebuilt) as its numbers.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..convert import Form, register_layer
from ..layers.psconv import PSConv2d, PSGConv2d, half_swap
from ._padding import numeric_padding, written_out
from .conv_bn import bn_scale_shift

PSConvRef = PSConv2d | PSGConv2d

Geometry = tuple[tuple[int, int, int], ...]  # per spatial axis: (kernel, dilation, padding)


class PSConvDeploy(nn.Module):
    """Sum of convs on the same input; conv i reads x[:, in_index[i]] and its output is gathered by
    out_index[i] (each optional: a constant Gather in ONNX)."""

    def __init__(self, convs: list[nn.Conv2d], in_index: list[torch.Tensor | None] | None = None,
                 out_index: list[torch.Tensor | None] | None = None):
        super().__init__()
        self.convs = nn.ModuleList(convs)
        for name, idx in (("in_index", in_index), ("out_index", out_index)):
            for i, t in enumerate(idx or [None] * len(convs)):
                self.register_buffer(f"{name}_{i}", t)

    def _index(self, name: str, i: int) -> torch.Tensor | None:
        return getattr(self, f"{name}_{i}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = None
        for i, conv in enumerate(self.convs):
            src, dst = self._index("in_index", i), self._index("out_index", i)
            z = conv(x if src is None else x.index_select(1, src))
            z = z if dst is None else z.index_select(1, dst)
            y = z if y is None else y + z
        return y

    @torch.no_grad()
    def fuse_bn(self, bn: nn.BatchNorm2d) -> "PSConvDeploy":
        """bn(self(x)): every conv scaled per output channel, the BN shift added to the first conv's bias."""
        s, t = bn_scale_shift(bn)
        convs = []
        for i, conv in enumerate(self.convs):
            dst = self._index("out_index", i)
            s_conv, t_conv = s, t
            if dst is not None:  # the conv's channel dst[o] lands on output channel o
                s_conv, t_conv = torch.empty_like(s), torch.empty_like(t)
                s_conv[dst], t_conv[dst] = s, t
            b = None
            if conv.bias is not None or i == 0:
                b = s_conv * (conv.bias.double() if conv.bias is not None else 0) + (t_conv if i == 0 else 0)
            w = conv.weight.double() * s_conv.reshape(-1, 1, 1, 1)
            convs.append(_conv_like(conv, w, b))
        n = len(self.convs)
        return PSConvDeploy(convs, [self._index("in_index", i) for i in range(n)],
                            [self._index("out_index", i) for i in range(n)])


def _conv_like(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Conv2d:
    new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, bias=bias is not None).to(conv.weight.device, conv.weight.dtype)
    new.weight.data.copy_(weight)
    if bias is not None:
        new.bias.data.copy_(bias)
    return new


def _branches(ref: PSConvRef) -> tuple[nn.Conv2d, nn.Conv2d, nn.Conv2d]:
    return ref.conv, ref.gwconv, ref.gwconv_shift


def _geometry(conv: nn.Conv2d) -> Geometry:
    return tuple(zip(conv.kernel_size, conv.dilation, conv.padding))


def _layer_groups(ref: PSConvRef) -> int:
    return ref.conv.groups


def numeric(ref: PSConvRef) -> PSConvRef:
    """`ref`, or a copy whose `conv` has its 'same'/'valid' padding as numbers: the branches are matched by
    their numeric geometry (and torch exports 'same' as an auto_pad ONNX Runtime refuses with dilation)."""
    if not isinstance(ref.conv.padding, str) or ref.conv.padding_mode != "zeros" or numeric_padding(ref.conv) is None:
        return ref
    copied = copy.deepcopy(ref)
    copied.conv = written_out(copied.conv)
    return copied


def geometry_reason(ref: PSConvRef) -> str | None:
    """Why the branches cannot be summed as convs for every input size, or None.

    A branch's output size is ⌊(H + 2q − e(k−1) − 1)/s⌋ + 1: equal for every H iff 2q − e(k−1) is.
    """
    ref = numeric(ref)
    convs = _branches(ref)
    if any(isinstance(c.padding, str) or c.padding_mode != "zeros" for c in convs):
        return "a branch has an asymmetric 'same' padding or a padding mode other than zeros"
    if len({c.stride for c in convs}) != 1:
        return "branches have different strides"
    for axis in range(2):
        if len({2 * q - e * (k - 1) for k, e, q in (g[axis] for g in map(_geometry, convs))}) != 1:
            return (f"conv padding {ref.conv.padding} does not give the grouped convs' output size "
                    "(the reference only adds them by broadcasting on degenerate sizes)")
    return None


def input_permutation(ref: PSConvRef) -> torch.Tensor:
    """perm with x_merge[:, c] = x[:, perm[c]]: the reference's half swap, applied to channel indices."""
    c = ref.conv.in_channels
    return half_swap(torch.arange(c).reshape(1, c, 1, 1), _layer_groups(ref)).flatten()


def shift_group_map(ref: PSConvRef) -> list[int] | str:
    """σ with: the shift conv's group g reads exactly x's group σ(g); or the reason there is none."""
    n = ref.gwconv_shift.groups
    ci = ref.conv.in_channels // n
    perm = input_permutation(ref)
    sigma = []
    for g in range(n):
        src = perm[g * ci:(g + 1) * ci]
        h = int(src.min()) // ci
        if not torch.equal(src.sort().values, torch.arange(h * ci, (h + 1) * ci)):
            return (f"the half swap cuts the shift conv's groups ({n} groups of {ci} channels; "
                    f"parts={n // _layer_groups(ref)}): it is not a permutation of groups")
        sigma.append(h)
    return sigma


def _dense_weight(conv: nn.Conv2d, in_perm: torch.Tensor | None = None) -> torch.Tensor:
    """conv's weight as a dense (out, in, kh, kw) float64 tensor; with in_perm, for conv(x[:, in_perm]) on x."""
    w = conv.weight.detach().double()
    co, ci = conv.out_channels // conv.groups, conv.in_channels // conv.groups
    dense = w.new_zeros(conv.out_channels, conv.in_channels, *w.shape[2:])
    for g in range(conv.groups):
        dense[g * co:(g + 1) * co, g * ci:(g + 1) * ci] = w[g * co:(g + 1) * co]
    if in_perm is not None:
        moved = torch.zeros_like(dense)
        moved[:, in_perm] = dense
        dense = moved
    return dense


def _merged_conv(parts: list[tuple[nn.Conv2d, torch.Tensor]], groups: int) -> nn.Conv2d:
    """One conv (dense within `groups`) equal to the sum of the given convs with the given dense weights.

    Same geometry: kept as is. Otherwise one dilation-1 kernel spanning every branch's taps: tap i of
    a branch (k, e, q) sits at offset e·i − q from the output's anchor, i.e. at e·i − q + P in a
    kernel with padding P = max q (the geometry check makes the far ends agree too).
    """
    convs = [c for c, _ in parts]
    first = convs[0]
    geos = {_geometry(c) for c in convs}
    if len(geos) == 1:
        (geo,) = geos
    else:
        geo = []
        for axis in range(2):
            k, e, q = first.kernel_size[axis], first.dilation[axis], first.padding[axis]
            pad = max(c.padding[axis] for c in convs)
            geo.append((2 * pad - (2 * q - e * (k - 1)) + 1, 1, pad))
        geo = tuple(geo)
    (kh, eh, ph), (kw, ew, pw) = geo
    weight = torch.zeros(first.out_channels, first.in_channels, kh, kw, dtype=torch.float64)
    bias = None
    for conv, w in parts:
        (k0, e0, q0), (k1, e1, q1) = _geometry(conv)
        if len(geos) == 1:  # same geometry: the taps keep their places
            rows, cols = torch.arange(k0), torch.arange(k1)
        else:  # positions in the dilation-1 union kernel
            rows, cols = torch.arange(k0) * e0 - q0 + ph, torch.arange(k1) * e1 - q1 + pw
        weight[:, :, rows[:, None], cols[None, :]] += w
        if conv.bias is not None:
            bias = conv.bias.detach().double() + (0 if bias is None else bias)
    co, ci = first.out_channels // groups, first.in_channels // groups
    blocks = torch.cat([weight[g * co:(g + 1) * co, g * ci:(g + 1) * ci] for g in range(groups)])
    out = nn.Conv2d(first.in_channels, first.out_channels, (kh, kw), first.stride, (ph, pw), (eh, ew), groups,
                    bias=bias is not None).to(first.weight.device, first.weight.dtype)
    out.weight.data.copy_(blocks)
    if bias is not None:
        out.bias.data.copy_(bias)
    return out


def _dense_conv_and_gw(ref: PSConvRef) -> list[nn.Conv2d]:
    """`conv` + `gwconv` as one conv where they share geometry, else as two."""
    g = _layer_groups(ref)
    if _geometry(ref.conv) == _geometry(ref.gwconv):
        return [_merged_conv([(ref.conv, _dense_weight(ref.conv)), (ref.gwconv, _dense_weight(ref.gwconv))], g)]
    gw = ref.gwconv
    return [_merged_conv([(ref.conv, _dense_weight(ref.conv))], g),
            _conv_like(gw, gw.weight.detach(), None if gw.bias is None else gw.bias.detach())]


def _regrouped_shift(ref: PSConvRef) -> tuple[nn.Conv2d, torch.Tensor]:
    """The shift conv on x (groups in σ order) and the output index putting its channels back."""
    shift, sigma = ref.gwconv_shift, shift_group_map(ref)
    assert not isinstance(sigma, str), sigma
    n = shift.groups
    ci, co = shift.in_channels // n, shift.out_channels // n
    perm = input_permutation(ref)
    w = shift.weight.detach()
    b = None if shift.bias is None else shift.bias.detach()
    new_w, new_b = torch.empty_like(w), None if b is None else torch.empty_like(b)
    out_index = torch.empty(shift.out_channels, dtype=torch.long)
    for g, h in enumerate(sigma):
        local = perm[g * ci:(g + 1) * ci] - h * ci  # x_merge position p of group g reads x channel h·ci + local[p]
        new_w[h * co:(h + 1) * co][:, local] = w[g * co:(g + 1) * co]
        if b is not None:
            new_b[h * co:(h + 1) * co] = b[g * co:(g + 1) * co]
        out_index[g * co:(g + 1) * co] = torch.arange(h * co, (h + 1) * co)
    return _conv_like(shift, new_w, new_b), out_index


def conv_components(ref: PSConvRef) -> list[tuple[list[int], list[int]]] | str:
    """`conv`'s weight split by its zero blocks into independent (out blocks, in blocks) groups, or why not.

    Blocks are the grouped convs' channel groups. The official training keeps `conv.weight` zero
    where the grouped convs act (the mask); with parts=4 what is left connects output groups {0, 2}
    only to input groups {1, 3} and {1, 3} to {0, 2}: two independent halves, a 2-group conv after a
    channel permutation, half the FLOPs. Read from the weights themselves, so exact for any values.
    """
    n = ref.gwconv.groups
    w = _dense_weight(ref.conv)
    co, ci = w.shape[0] // n, w.shape[1] // n
    nz = w.reshape(n, co, n, ci, -1).abs().amax(dim=(1, 3, 4)) > 0  # nz[a, b]: out block a reads in block b
    if not nz.any():
        return []
    parent = list(range(2 * n))  # union-find over out blocks 0..n-1 and in blocks n..2n-1

    def root(u: int) -> int:
        while parent[u] != u:
            parent[u] = parent[parent[u]]
            u = parent[u]
        return u

    for a, b in nz.nonzero().tolist():
        parent[root(a)] = root(n + b)
    comps: dict[int, tuple[list[int], list[int]]] = {}
    for u in range(2 * n):
        outs, ins = comps.setdefault(root(u), ([], []))
        (outs if u < n else ins).append(u % n)
    groups = list(comps.values())
    m = n // len(groups) if n % len(groups) == 0 else 0
    if len(groups) <= ref.conv.groups or any(len(o) != m or len(i) != m for o, i in groups):
        return ("conv's weight does not split into more independent equal groups than its own `groups` "
                "(its zero blocks are not those the official mask keeps)")
    return sorted(groups)


def _block_channels(blocks: list[int], size: int) -> torch.Tensor:
    return torch.cat([torch.arange(b * size, (b + 1) * size) for b in blocks])


def _masked(ref: PSConvRef) -> PSConvDeploy:
    """`conv` as a grouped conv over its independent groups (Gather in, Gather out), `gwconv` as it is,
    `gwconv_shift` regrouped; conv dropped where its weight is all zero (parts=2)."""
    comps = conv_components(ref)
    assert not isinstance(comps, str), comps
    gw = ref.gwconv
    shift, shift_index = _regrouped_shift(ref)
    convs = [_conv_like(gw, gw.weight.detach(), None if gw.bias is None else gw.bias.detach()), shift]
    in_index, out_index = [None, None], [None, shift_index]
    if comps:
        n, conv = gw.groups, ref.conv
        zo = torch.cat([_block_channels(o, conv.out_channels // n) for o, _ in comps])
        zi = torch.cat([_block_channels(i, conv.in_channels // n) for _, i in comps])
        w = _dense_weight(conv)[zo][:, zi]
        k, go, gi = len(comps), conv.out_channels // len(comps), conv.in_channels // len(comps)
        blocks = torch.cat([w[j * go:(j + 1) * go, j * gi:(j + 1) * gi] for j in range(k)])
        grouped = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                            conv.dilation, k, bias=False).to(conv.weight.device, conv.weight.dtype)
        convs.insert(0, _conv_like(grouped, blocks, None if conv.bias is None else conv.bias.detach()[zo]))
        in_index.insert(0, zi)
        out_index.insert(0, torch.argsort(zo))  # output channel o is the grouped conv's channel j with zo[j] = o
    elif ref.conv.bias is not None:  # an all-zero conv still adds its bias
        b = convs[0].bias.detach() + ref.conv.bias.detach() if convs[0].bias is not None else ref.conv.bias.detach()
        convs[0] = _conv_like(convs[0], convs[0].weight.detach(), b)
    return PSConvDeploy(convs, in_index, out_index)


def _build(ref: PSConvRef, form: str) -> nn.Module:
    """Form `form` of `ref` (its 'same' padding written out: `numeric`); `_exact_for(form)` is checked first."""
    ref = numeric(ref)
    perm = input_permutation(ref)
    g = _layer_groups(ref)
    shift = (ref.gwconv_shift, _dense_weight(ref.gwconv_shift, perm))
    if form == "dense":
        return _merged_conv([(c, _dense_weight(c)) for c in (ref.conv, ref.gwconv)] + [shift], g)
    if form == "shift_dense":
        return PSConvDeploy([*_dense_conv_and_gw(ref), _merged_conv([shift], g)])
    if form == "regrouped":
        conv, out_index = _regrouped_shift(ref)
        first = _dense_conv_and_gw(ref)
        return PSConvDeploy([*first, conv], out_index=[None] * len(first) + [out_index])
    if form == "masked":
        return _masked(ref)
    raise ValueError(f"unknown PSConv form '{form}'; choose one of {', '.join(_NOTES)}")


def _exact_for(form: str):
    def check(ref: PSConvRef) -> str | None:
        ref = numeric(ref)
        why = geometry_reason(ref)
        if why is None and form in ("regrouped", "masked"):
            sigma = shift_group_map(ref)
            why = sigma if isinstance(sigma, str) else None
        if why is None and form == "masked":
            comps = conv_components(ref)
            why = comps if isinstance(comps, str) else None
        return why
    return check


#: the forms (registered below, in this order: measured, the same order on both runtimes) and their notes
_NOTES = {
    "masked": "conv as a grouped conv over the blocks its (masked) weights leave independent, Gathers in/out; "
              "gwconv; grouped shift conv + Gather; 1.0× FLOPs at parts=4; exact only for such weights",
    "regrouped": "conv+gwconv merged (dilation 1) + grouped shift conv on x, one output Gather; (1+1/parts)× FLOPs",
    "shift_dense": "conv+gwconv merged + block-sparse dense shift conv (half swap in its weights); 2× FLOPs, no Gather",
    "dense": "one dilation-1 conv covering all taps (5×5 at dilation 1); one op, 2.8× FLOPs",
}

for _cls in (PSConv2d, PSGConv2d):
    register_layer(
        _cls,
        forms=[Form(f, (lambda f: lambda ref: _build(ref, f))(f), dynamic_batch=True, constant_weights=True,
                    exact_for=_exact_for(f), note=note) for f, note in _NOTES.items()],
        prefer={"*": list(_NOTES)},  # measured: the same order on both runtimes
    )
