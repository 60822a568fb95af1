"""Re-creation of megvii-research/DRConv (DRConv.py, ShuffleNetV2_pytorch.py) as that repo has it, for tests.

The one change: upstream's `Deformable_MatMul3` calls a compiled CUDA extension (and returns zeros
without CUDA). Here its forward is a plain loop over samples and regions, selecting each region's
pixels with a boolean mask, written independently of polyexport's gather/einsum version. It is
differentiable by autograd for the input and the kernels (the selected kernel only, as the CUDA
backward), but passes no gradient to Alpha: the tests check that part against their own expression.
ShuffleNetV2 drops only upstream's construction-time print and `_initialize_weights` (tests randomize).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.utils import _pair


def deformable_matmul3_loop(mat0, mat1, mask):
    """out[n, o, y, x] = sum_i mat0[n, i, y, x] * mat1[n, o, i, int(mask[n, y, x])], region by region."""
    batch, cin, height, width = mat0.shape
    if mat1.dim() == 3:
        mat1 = mat1.unsqueeze(0).expand(batch, -1, -1, -1)
    cout, num = mat1.shape[1], mat1.shape[3]
    if mask.dim() == 2:
        mask = mask.unsqueeze(0).expand(batch, -1, -1)
    mask = mask.to(mat0.dtype).long()  # upstream: float mask, int() in the kernel
    rows = []
    for n in range(batch):
        flat = mat0[n].reshape(cin, height * width)
        out = flat.new_zeros(cout, height * width)
        regions = mask[n].reshape(-1)
        for g in range(num):
            where = regions == g
            if bool(where.any()):
                out = out.index_put((torch.arange(cout).unsqueeze(1), where.nonzero().reshape(1, -1)),
                                    mat1[n, :, :, g] @ flat[:, where])
        rows.append(out.reshape(cout, height, width))
    return torch.stack(rows)


class Deformable_MatMul3(nn.Module):  # noqa: N801 - upstream name
    def __init__(self):
        super(Deformable_MatMul3, self).__init__()

    def forward(self, mat0, mat1, mask, Alpha, use_alpha=False, beta=1.0):  # noqa: N803
        return deformable_matmul3_loop(mat0, mat1, mask)


class DRConv(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1, bias=True, dilation=1, groups_num=8, num_W=8):  # noqa: N803
        super(DRConv, self).__init__()

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.groups = groups
        self.dilation = _pair(dilation)
        self.groups_num = groups_num
        self.num_W = num_W
        self.use_unflod = False if (self.kernel_size[0] == 1 and self.stride[0] == 1 and self.padding[0] == 0 and self.dilation[0] == 1) else True

        self.weight = nn.Parameter(torch.Tensor(out_channels * in_channels * self.kernel_size[0] * self.kernel_size[1], self.num_W))
        if bias:
            self.bias = nn.Parameter(torch.Tensor(out_channels))
        else:
            self.register_parameter('bias', None)

        self.routing_fc = nn.Linear(in_channels, self.groups_num * self.num_W)
        self.deformable_matmul3 = Deformable_MatMul3()

        self.reset_parameters()

    def reset_parameters(self):
        n = self.in_channels
        for k in self.kernel_size:
            n *= k
        bound = math.sqrt(6 / n)
        self.weight.data.uniform_(-bound, bound)
        if self.bias is not None:
            self.bias.data.zero_()

        self.routing_fc.weight.data.normal_(0, 0.01)
        if self.routing_fc.bias is not None:
            self.routing_fc.bias.data.zero_()

    def forward(self, inputs, mask, Alpha, use_alpha=False, beta=1.0):  # noqa: N803
        alpha = 1.0

        batch_size, channel, height, width = inputs.shape

        self.out_height = int(math.floor(
            (height + 2 * self.padding[0] - self.dilation[0] * (self.kernel_size[0] - 1) - 1) / self.stride[0] + 1))
        self.out_width = int(math.floor(
            (width + 2 * self.padding[1] - self.dilation[1] * (self.kernel_size[1] - 1) - 1) / self.stride[1] + 1))

        x_se = inputs.reshape(inputs.shape[0], inputs.shape[1], -1).mean(dim=-1, keepdim=False)
        x_se = 2.0 * torch.sigmoid(alpha * self.routing_fc(x_se)) / self.num_W
        weight = F.linear(x_se.reshape(-1, self.num_W), self.weight)
        weight = weight.reshape(batch_size, self.groups_num, self.out_channels, self.in_channels * self.kernel_size[0] * self.kernel_size[1]).permute(0, 2, 3, 1)

        if self.use_unflod:
            inputs = F.unfold(inputs, self.kernel_size, dilation=self.dilation, padding=self.padding, stride=self.stride)
            inputs = inputs.reshape(inputs.shape[0], inputs.shape[1], self.out_height, self.out_width)

        if mask.shape[-2:] != torch.Size([self.out_height, self.out_width]):
            mask = F.interpolate(mask.float().unsqueeze(1), (self.out_height, self.out_width)).squeeze(1)
            Alpha = F.interpolate(Alpha, (self.out_height, self.out_width))
        out = self.deformable_matmul3(inputs, weight, mask, Alpha, use_alpha, beta)

        if self.bias is not None:
            out = out + self.bias.reshape(1, -1, 1, 1)
        return out


class conv_bn_relu(nn.Module):  # noqa: N801
    def __init__(self, input_channel, output_channel, kernel_size, stride, padding,
                 groups=1, bias=True, bn=True, relu=True, DLS=False, groups_num=8):  # noqa: N803
        super(conv_bn_relu, self).__init__()
        self.DLS = DLS
        self.has_bn = bn
        self.has_relu = relu

        if DLS:
            self.conv = DRConv(input_channel, output_channel, kernel_size, stride, padding, groups=groups, bias=bias, groups_num=groups_num, num_W=8)
        else:
            self.conv = nn.Conv2d(input_channel, output_channel, kernel_size, stride, padding, groups=groups, bias=bias)

        if self.has_bn:
            self.bn = nn.BatchNorm2d(output_channel, momentum=0.1)
        if self.has_relu:
            self.relu = nn.ReLU(inplace=True)

    def forward(self, x, mask=None, Alpha=None):  # noqa: N803
        if self.DLS:
            x = self.conv(x, mask, Alpha)
        else:
            x = self.conv(x)
        if self.has_bn:
            x = self.bn(x)
        if self.has_relu:
            x = self.relu(x)
        return x


def channel_shuffle_v2(x):
    batchsize, num_channels, height, width = x.data.size()
    x = x.reshape(batchsize * num_channels // 2, 2, height * width)
    x = x.permute(1, 0, 2)
    x = x.reshape(2, batchsize, num_channels // 2, height, width)
    return x[0], x[1]


class make_block(nn.Module):  # noqa: N801
    def __init__(self, inp, oup, stride, groups_num=8):
        super(make_block, self).__init__()
        self.stride = stride
        self.inp = inp
        self.groups_num = groups_num
        assert stride in [1, 2]

        inp = inp if self.stride == 2 else inp // 2
        right_oup = oup - inp
        mid_channel = oup // 2

        self.masknet = nn.Conv2d(inp, groups_num, kernel_size=1, stride=1, padding=0, bias=False)
        self.conva_right = conv_bn_relu(inp, mid_channel, kernel_size=1, stride=1, padding=0, bias=False, DLS=True, groups_num=groups_num)
        self.convb_right = conv_bn_relu(mid_channel, mid_channel, kernel_size=3, stride=self.stride, padding=1, groups=mid_channel, bias=False, relu=False)
        self.convc_right = conv_bn_relu(mid_channel, right_oup, kernel_size=1, stride=1, padding=0, bias=False, DLS=True, groups_num=groups_num)

        if self.stride == 2:
            self.conva_left = conv_bn_relu(inp, inp, kernel_size=3, stride=self.stride, padding=1, groups=inp, bias=False, relu=False)
            self.convb_left = conv_bn_relu(inp, inp, kernel_size=1, stride=1, padding=0, bias=False, DLS=False, groups_num=groups_num)

    def forward(self, x, alpha=1.0):
        if self.stride == 2:
            x_proj = x
            x_proj = self.conva_left(x_proj)
            x_proj = self.convb_left(x_proj)
        else:
            x_proj, x = channel_shuffle_v2(x)

        Alpha = self.masknet(x)  # noqa: N806
        Alpha = F.softmax(Alpha, dim=1)  # noqa: N806
        mask = torch.argmax(Alpha, dim=1)
        x = self.conva_right(x, mask, Alpha)
        x = self.convb_right(x)
        x = self.convc_right(x, mask, Alpha)

        return torch.cat((x_proj, x), 1)


class ShuffleNetV2(nn.Module):
    def __init__(self, n_class=1000, input_size=224, width_mult=1.0):
        super(ShuffleNetV2, self).__init__()

        assert input_size % 32 == 0

        if width_mult == 0.5:
            channels = [24, 48, 96, 192, 1024]
        elif width_mult == 1.0:
            channels = [24, 116, 232, 464, 1024]
        elif width_mult == 1.5:
            channels = [24, 176, 352, 704, 1024]
        elif width_mult == 2.0:
            channels = [24, 244, 488, 976, 2048]

        self.conv_first = conv_bn_relu(input_channel=3, output_channel=channels[0], kernel_size=3, stride=2, padding=1)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        self.stage1_block1 = make_block(channels[0], channels[1], 2)
        self.stage1_block2 = make_block(channels[1], channels[1], 1)
        self.stage1_block3 = make_block(channels[1], channels[1], 1)
        self.stage1_block4 = make_block(channels[1], channels[1], 1)

        self.stage2_block1 = make_block(channels[1], channels[2], 2)
        self.stage2_block2 = make_block(channels[2], channels[2], 1)
        self.stage2_block3 = make_block(channels[2], channels[2], 1)
        self.stage2_block4 = make_block(channels[2], channels[2], 1)
        self.stage2_block5 = make_block(channels[2], channels[2], 1)
        self.stage2_block6 = make_block(channels[2], channels[2], 1)
        self.stage2_block7 = make_block(channels[2], channels[2], 1)
        self.stage2_block8 = make_block(channels[2], channels[2], 1)

        self.stage3_block1 = make_block(channels[2], channels[3], 2)
        self.stage3_block2 = make_block(channels[3], channels[3], 1)
        self.stage3_block3 = make_block(channels[3], channels[3], 1)
        self.stage3_block4 = make_block(channels[3], channels[3], 1)

        self.conv_last = conv_bn_relu(channels[3], channels[4], kernel_size=1, stride=1, padding=0)
        self.globalpool = nn.AvgPool2d(input_size // 32)
        self.classifier = nn.Linear(channels[4], n_class)

    def forward(self, x):
        x = self.conv_first(x)
        x = self.maxpool(x)

        x = self.stage1_block1(x)
        x = self.stage1_block2(x)
        x = self.stage1_block3(x)
        x = self.stage1_block4(x)

        x = self.stage2_block1(x)
        x = self.stage2_block2(x)
        x = self.stage2_block3(x)
        x = self.stage2_block4(x)
        x = self.stage2_block5(x)
        x = self.stage2_block6(x)
        x = self.stage2_block7(x)
        x = self.stage2_block8(x)

        x = self.stage3_block1(x)
        x = self.stage3_block2(x)
        x = self.stage3_block3(x)
        x = self.stage3_block4(x)

        x = self.conv_last(x)
        x = self.globalpool(x)
        x = x.view(-1, 1024)
        x = self.classifier(x)
        return x
