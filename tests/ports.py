"""Minimal, independent re-implementations of two public ports' module structures.

Written from the layouts described in issue 8 (not copied from the ports), only to prove that
shg_fast.convert's renaming computes the same function: same parameter names and shapes, and
each port's own forward (princeton-vl: NHWC in, stacked out; bearpaw: list out).
"""

import torch
from torch import nn
from torch.nn import functional as F


class PrincetonConv(nn.Module):
    """princeton-vl's ``Conv``: ``.conv`` (with bias), optional ``.bn``, optional ReLU."""

    def __init__(self, cin, cout, k=3, stride=1, bn=False, relu=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, padding=(k - 1) // 2, bias=True)
        self.bn = nn.BatchNorm2d(cout) if bn else None
        self.relu = relu

    def forward(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class PrincetonResidual(nn.Module):
    """princeton-vl's Residual: always owns ``skip_layer``, uses it only when in != out."""

    def __init__(self, cin, cout):
        super().__init__()
        mid = cout // 2
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = PrincetonConv(cin, mid, 1, relu=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv2 = PrincetonConv(mid, mid, 3, relu=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv3 = PrincetonConv(mid, cout, 1, relu=False)
        self.skip_layer = PrincetonConv(cin, cout, 1, relu=False)
        self.need_skip = cin != cout

    def forward(self, x):
        residual = self.skip_layer(x) if self.need_skip else x
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        out = self.conv3(F.relu(self.bn3(out)))
        return out + residual


class PrincetonHourglass(nn.Module):
    def __init__(self, n, f):
        super().__init__()
        self.up1 = PrincetonResidual(f, f)
        self.low1 = PrincetonResidual(f, f)
        self.low2 = PrincetonHourglass(n - 1, f) if n > 1 else PrincetonResidual(f, f)
        self.low3 = PrincetonResidual(f, f)

    def forward(self, x):
        low = self.low3(self.low2(self.low1(F.max_pool2d(x, 2, 2))))
        return self.up1(x) + F.interpolate(low, scale_factor=2, mode="nearest")


class PrincetonMerge(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = PrincetonConv(cin, cout, 1, relu=False)

    def forward(self, x):
        return self.conv(x)


class PrincetonPoseNet(nn.Module):
    """princeton-vl's PoseNet: NHWC input, ``torch.stack`` of the per-stack heatmaps."""

    def __init__(self, nstack, f, joints):
        super().__init__()
        self.nstack = nstack
        self.pre = nn.Sequential(PrincetonConv(3, 64, 7, 2, bn=True, relu=True), PrincetonResidual(64, 128),
                                 nn.MaxPool2d(2, 2), PrincetonResidual(128, 128), PrincetonResidual(128, f))
        self.hgs = nn.ModuleList([nn.Sequential(PrincetonHourglass(4, f)) for _ in range(nstack)])
        self.features = nn.ModuleList([
            nn.Sequential(PrincetonResidual(f, f), PrincetonConv(f, f, 1, bn=True, relu=True))
            for _ in range(nstack)
        ])
        self.outs = nn.ModuleList([PrincetonConv(f, joints, 1, relu=False) for _ in range(nstack)])
        self.merge_features = nn.ModuleList([PrincetonMerge(f, f) for _ in range(nstack - 1)])
        self.merge_preds = nn.ModuleList([PrincetonMerge(joints, f) for _ in range(nstack - 1)])

    def forward(self, imgs):
        x = self.pre(imgs.permute(0, 3, 1, 2))
        preds = []
        for i in range(self.nstack):
            feature = self.features[i](self.hgs[i](x))
            preds.append(self.outs[i](feature))
            if i < self.nstack - 1:
                x = x + self.merge_preds[i](preds[-1]) + self.merge_features[i](feature)
        return torch.stack(preds, 1)


class BearpawBottleneck(nn.Module):
    """bearpaw's pre-activation Bottleneck (expansion 2), projection in ``downsample``."""

    def __init__(self, inplanes, planes, downsample=None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = nn.Conv2d(inplanes, planes, 1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, 2 * planes, 1)
        self.downsample = downsample

    def forward(self, x):
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        out = self.conv3(F.relu(self.bn3(out)))
        return out + (x if self.downsample is None else self.downsample(x))


def _bearpaw_blocks(planes, blocks):
    return nn.Sequential(*[BearpawBottleneck(2 * planes, planes) for _ in range(blocks)])


class BearpawHourglass(nn.Module):
    """``hg[d][k]``: d = depth - 1 outermost; k = 0 up1, 1 low1, 2 low3, 3 innermost low2."""

    def __init__(self, blocks, planes, depth=4):
        super().__init__()
        self.depth = depth
        self.hg = nn.ModuleList([
            nn.ModuleList([_bearpaw_blocks(planes, blocks) for _ in range(4 if d == 0 else 3)])
            for d in range(depth)
        ])

    def _forward(self, n, x):
        level = self.hg[n - 1]
        low1 = level[1](F.max_pool2d(x, 2, stride=2))
        low2 = self._forward(n - 1, low1) if n > 1 else level[3](low1)
        return level[0](x) + F.interpolate(level[2](low2), scale_factor=2)

    def forward(self, x):
        return self._forward(self.depth, x)


class BearpawHourglassNet(nn.Module):
    """bearpaw/anibali's HourglassNet with ``num_feats`` bottleneck planes (f = 2 * num_feats)."""

    def __init__(self, num_stacks, num_blocks, num_classes, num_feats):
        super().__init__()
        ch = 2 * num_feats
        self.num_stacks = num_stacks
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = nn.Sequential(BearpawBottleneck(64, 64, nn.Sequential(nn.Conv2d(64, 128, 1))))
        self.layer2 = nn.Sequential(BearpawBottleneck(128, 64))
        self.layer3 = nn.Sequential(BearpawBottleneck(128, num_feats, nn.Sequential(nn.Conv2d(128, ch, 1))))
        self.hg = nn.ModuleList([BearpawHourglass(num_blocks, num_feats) for _ in range(num_stacks)])
        self.res = nn.ModuleList([_bearpaw_blocks(num_feats, num_blocks) for _ in range(num_stacks)])
        self.fc = nn.ModuleList([
            nn.Sequential(nn.Conv2d(ch, ch, 1), nn.BatchNorm2d(ch), nn.ReLU()) for _ in range(num_stacks)
        ])
        self.score = nn.ModuleList([nn.Conv2d(ch, num_classes, 1) for _ in range(num_stacks)])
        self.fc_ = nn.ModuleList([nn.Conv2d(ch, ch, 1) for _ in range(num_stacks - 1)])
        self.score_ = nn.ModuleList([nn.Conv2d(num_classes, ch, 1) for _ in range(num_stacks - 1)])

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(F.max_pool2d(self.layer1(x), 2, stride=2)))
        out = []
        for i in range(self.num_stacks):
            y = self.fc[i](self.res[i](self.hg[i](x)))
            score = self.score[i](y)
            out.append(score)
            if i < self.num_stacks - 1:
                x = x + self.fc_[i](y) + self.score_[i](score)
        return out
