"""Re-creation of DyCo3D's dynamic head (aim-uofa/DyCo3D @ 06ca40c, `model/pointgroup/pointgroup.py`).

Only the parts of `PointGroup` that make and run the per-instance convolutions: `__init__`'s
`output_dim = 16`, `embedding_conv_num = 2`, `USE_COORDS = True`, the weight/bias counts,
`before_embedding_tower` (1×1 Conv1d m → 16 without bias, BN, ReLU: `conv_with_kaiming_uniform("BN",
activation=True)`) and `controller = nn.Conv1d(16, num_gen_params, 1)`; `parse_dynamic_params` and
`mask_heads_forward` with upstream's tensor layouts ((points, c, 1) mask features, (1, n, points)
logits). The sparse U-Net, clustering and ROI pooling that produce their inputs need CUDA ops and are
out of scope. Written here, not copied.
"""
import torch
import torch.nn.functional as F
from torch import nn


class PointGroupDynamicHead(nn.Module):
    def __init__(self, m=16):
        super().__init__()
        self.output_dim = 16
        self.before_embedding_tower = nn.Sequential(
            nn.Sequential(nn.Conv1d(m, self.output_dim, 1, bias=False), nn.BatchNorm1d(self.output_dim), nn.ReLU()))
        self.use_coords = True
        self.embedding_conv_num = 2
        weight_nums, bias_nums = [], []
        for i in range(self.embedding_conv_num):
            if i == 0:
                weight_nums.append((self.output_dim + (3 if self.use_coords else 0)) * self.output_dim)
                bias_nums.append(self.output_dim)
            elif i == self.embedding_conv_num - 1:
                weight_nums.append(self.output_dim)
                bias_nums.append(1)
            else:
                weight_nums.append(self.output_dim * self.output_dim)
                bias_nums.append(self.output_dim)
        self.weight_nums, self.bias_nums = weight_nums, bias_nums
        self.num_gen_params = sum(weight_nums) + sum(bias_nums)
        self.controller = nn.Conv1d(self.output_dim, self.num_gen_params, kernel_size=1)
        torch.nn.init.normal_(self.controller.weight, std=0.01)
        torch.nn.init.constant_(self.controller.bias, 0)

    def generate(self, params_feats):
        """(proposals, m) pooled proposal features -> (proposals, num_gen_params), as PointGroup.forward does."""
        return self.controller(self.before_embedding_tower(params_feats.unsqueeze(2))).squeeze(dim=2)

    def parse_dynamic_params(self, params, out_channels):
        assert params.dim() == 2
        assert len(self.weight_nums) == len(self.bias_nums)
        assert params.size(1) == sum(self.weight_nums) + sum(self.bias_nums)
        num_instances, num_layers = params.size(0), len(self.weight_nums)
        splits = list(torch.split_with_sizes(params, self.weight_nums + self.bias_nums, dim=1))
        weights, biases = splits[:num_layers], splits[num_layers:]
        for l in range(num_layers):
            out = out_channels if l < num_layers - 1 else 1
            weights[l] = weights[l].reshape(num_instances * out, -1, 1)
            biases[l] = biases[l].reshape(num_instances * out)
        return weights, biases

    def mask_heads_forward(self, mask_features, weights, biases, inst_batch_id, clusters_coords_mean, coords_, use_coords=True):
        num_insts = inst_batch_id.size(0)
        assert mask_features.dim() == 3
        n_mask = mask_features.size(0)
        x = mask_features.permute(2, 1, 0).repeat(num_insts, 1, 1)  # (n_inst, c, n_mask)
        rel = (clusters_coords_mean.reshape(-1, 1, 3) - coords_.reshape(1, -1, 3)).permute(0, 2, 1)
        if use_coords:
            x = torch.cat([rel, x], dim=1)
        x = x.reshape(1, -1, n_mask)
        for i, (w, b) in enumerate(zip(weights, biases)):
            x = F.conv1d(x, w, bias=b, stride=1, padding=0, groups=num_insts)
            if i < len(weights) - 1:
                x = F.relu(x)
        return x

    def logits(self, mask_features, params, clusters_coords_mean, coords_):
        """What PointGroup.forward stores as ret['mask_logits'] for these inputs: (n_inst, n_mask)."""
        weights, biases = self.parse_dynamic_params(params, self.output_dim)
        inst_batch_id = torch.zeros(params.size(0), dtype=torch.int32)  # only its length is read
        return self.mask_heads_forward(mask_features, weights, biases, inst_batch_id, clusters_coords_mean, coords_,
                                       use_coords=self.use_coords).squeeze(dim=0)
