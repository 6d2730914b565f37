"""Independent mirrors of two public PyTorch Stacked Hourglass ports, to test shg_fast.convert against.

Written here from reading each port's model code (read, not copied): same module tree, so the
same ``state_dict`` keys and shapes, and the same forward computation. The facts each class
mirrors are listed in its docstring with the repository, file and layers. What the ports'
checkpoints look like (key prefixes, input normalisation) is documented in shg_fast.convert.
"""

import torch
from torch import nn
from torch.nn import functional as F

# --------------------------------------------------------------------------------------------
# princeton-vl/pytorch_stacked_hourglass: models/layers.py (Conv, Residual, Hourglass, Pool) and
# models/posenet.py (Merge, PoseNet).
# --------------------------------------------------------------------------------------------


class PrincetonConv(nn.Module):
    """models/layers.py ``Conv(inp_dim, out_dim, kernel_size=3, stride=1, bn=False, relu=True)``.

    ``self.conv = nn.Conv2d(k, stride, padding=(k - 1) // 2, bias=True)``; then ``self.bn``
    (BatchNorm2d(out_dim)) only when ``bn``, then ``self.relu`` (nn.ReLU) only when ``relu``.
    Its forward asserts the input channel count.
    """

    def __init__(self, inp_dim, out_dim, kernel_size=3, stride=1, bn=False, relu=True):
        super().__init__()
        self.inp_dim = inp_dim
        self.conv = nn.Conv2d(inp_dim, out_dim, kernel_size, stride, padding=(kernel_size - 1) // 2, bias=True)
        self.relu = nn.ReLU() if relu else None
        self.bn = nn.BatchNorm2d(out_dim) if bn else None

    def forward(self, x):
        assert x.shape[1] == self.inp_dim, (x.shape, self.inp_dim)
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return x if self.relu is None else self.relu(x)


class PrincetonResidual(nn.Module):
    """models/layers.py ``Residual(inp_dim, out_dim)``, pre-activation, mid = out_dim / 2.

    ``bn1(inp) → relu → conv1 = Conv(inp, mid, 1, relu=False) → bn2 → relu → conv2 = Conv(mid, mid, 3,
    relu=False) → bn3 → relu → conv3 = Conv(mid, out, 1, relu=False)``, plus the residual:
    ``skip_layer = Conv(inp, out, 1, relu=False)`` is ALWAYS built (so its weights are in every
    checkpoint) but applied only when ``need_skip = inp_dim != out_dim``; else the identity.
    """

    def __init__(self, inp_dim, out_dim):
        super().__init__()
        mid = int(out_dim / 2)
        self.relu = nn.ReLU()
        self.bn1 = nn.BatchNorm2d(inp_dim)
        self.conv1 = PrincetonConv(inp_dim, mid, 1, relu=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv2 = PrincetonConv(mid, mid, 3, relu=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv3 = PrincetonConv(mid, out_dim, 1, relu=False)
        self.skip_layer = PrincetonConv(inp_dim, out_dim, 1, relu=False)
        self.need_skip = inp_dim != out_dim

    def forward(self, x):
        residual = self.skip_layer(x) if self.need_skip else x
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return out + residual


class PrincetonHourglass(nn.Module):
    """models/layers.py ``Hourglass(n, f, bn=None, increase=0)``, nf = f + increase.

    ``up1 = Residual(f, f)``; ``pool1 = MaxPool2d(2, 2)``; ``low1 = Residual(f, nf)``; ``low2 =
    Hourglass(n - 1, nf)`` or at n == 1 ``Residual(nf, nf)``; ``low3 = Residual(nf, f)``; ``up2 =
    nn.Upsample(scale_factor=2, mode='nearest')`` (one stored version calls ``F.interpolate(low3,
    size=up1.shape[2:], mode='nearest')`` instead: the same for even sizes); out = up1 + up2.
    ``bn`` is unused. ``increase`` is 0 in the repository's config (task/pose.py); other values
    change the shapes, which shg_fast does not model (convert refuses them).
    """

    def __init__(self, n, f, bn=None, increase=0):
        super().__init__()
        nf = f + increase
        self.up1 = PrincetonResidual(f, f)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.low1 = PrincetonResidual(f, nf)
        self.n = n
        self.low2 = PrincetonHourglass(n - 1, nf, bn=bn) if n > 1 else PrincetonResidual(nf, nf)
        self.low3 = PrincetonResidual(nf, f)
        self.up2 = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, x):
        return self.up1(x) + self.up2(self.low3(self.low2(self.low1(self.pool1(x)))))


class PrincetonMerge(nn.Module):
    """models/posenet.py ``Merge(x_dim, y_dim)``: ``self.conv = Conv(x_dim, y_dim, 1, relu=False, bn=False)``."""

    def __init__(self, x_dim, y_dim):
        super().__init__()
        self.conv = PrincetonConv(x_dim, y_dim, 1, relu=False, bn=False)

    def forward(self, x):
        return self.conv(x)


class PrincetonPoseNet(nn.Module):
    """models/posenet.py ``PoseNet(nstack, inp_dim, oup_dim, bn=False, increase=0)``.

    ``pre = Sequential(Conv(3, 64, 7, 2, bn=True, relu=True), Residual(64, 128), Pool(2, 2),
    Residual(128, 128), Residual(128, inp_dim))`` (the Torch7 stem; keys ``pre.{0,1,3,4}``);
    ``hgs[i] = Sequential(Hourglass(4, inp_dim, bn, increase))``; ``features[i] =
    Sequential(Residual(inp_dim, inp_dim), Conv(inp_dim, inp_dim, 1, bn=True, relu=True))``;
    ``outs[i] = Conv(inp_dim, oup_dim, 1, relu=False, bn=False)``; ``merge_features[i] =
    Merge(inp_dim, inp_dim)`` and ``merge_preds[i] = Merge(oup_dim, inp_dim)`` for i < nstack - 1.
    forward: ``x = imgs.permute(0, 3, 1, 2)`` (NHWC input, as at commit 9844d5c; later stored
    versions, of forks folded into the same history, comment it out and take NCHW: ``nhwc=False``
    here), then per stack ``preds = outs[i](features[i](hgs[i](x)))``
    and ``x = x + merge_preds[i](preds) + merge_features[i](feature)``; returns
    ``torch.stack(preds, 1)`` of shape (N, nstack, oup_dim, H/4, W/4). (It also owns a
    parameter-free HeatmapLoss module, left out here.) task/pose.py trains it as
    ``Trainer(DataParallel(PoseNet(nstack=8, inp_dim=256, oup_dim=16, increase=0)))``, whose
    ``.model.module.`` is the prefix of every key in its checkpoints' ``state_dict``.
    """

    def __init__(self, nstack, inp_dim, oup_dim, bn=False, increase=0, nhwc=True):
        super().__init__()
        self.nstack = nstack
        self.nhwc = nhwc
        self.pre = nn.Sequential(
            PrincetonConv(3, 64, 7, 2, bn=True, relu=True), PrincetonResidual(64, 128), nn.MaxPool2d(2, 2),
            PrincetonResidual(128, 128), PrincetonResidual(128, inp_dim))
        self.hgs = nn.ModuleList([nn.Sequential(PrincetonHourglass(4, inp_dim, bn, increase)) for _ in range(nstack)])
        self.features = nn.ModuleList([
            nn.Sequential(PrincetonResidual(inp_dim, inp_dim), PrincetonConv(inp_dim, inp_dim, 1, bn=True, relu=True))
            for _ in range(nstack)])
        self.outs = nn.ModuleList([PrincetonConv(inp_dim, oup_dim, 1, relu=False, bn=False) for _ in range(nstack)])
        self.merge_features = nn.ModuleList([PrincetonMerge(inp_dim, inp_dim) for _ in range(nstack - 1)])
        self.merge_preds = nn.ModuleList([PrincetonMerge(oup_dim, inp_dim) for _ in range(nstack - 1)])

    def forward(self, imgs):
        x = self.pre(imgs.permute(0, 3, 1, 2) if self.nhwc else imgs)
        combined = []
        for i in range(self.nstack):
            feature = self.features[i](self.hgs[i](x))
            preds = self.outs[i](feature)
            combined.append(preds)
            if i < self.nstack - 1:
                x = x + self.merge_preds[i](preds) + self.merge_features[i](feature)
        return torch.stack(combined, 1)


# --------------------------------------------------------------------------------------------
# bearpaw/pytorch-pose: pose/models/hourglass.py (Bottleneck, Hourglass, HourglassNet, hg1/2/4/8).
# anibali/pytorch-stacked-hourglass: stacked_hourglass/model.py is the same code ("(c) YANG, Wei",
# same classes, same attribute names, so the same state_dict keys) with two differences mirrored
# by ``upsample="interpolate"``: Hourglass upsamples with F.interpolate(low3, scale_factor=2)
# (nearest, same values) instead of nn.UpsamplingNearest2d; and its pretrained files
# (model_urls 'hg1', 'hg2', 'hg8' = bearpaw_hg{1,2,8}-*.pth, hg(num_stacks, num_blocks,
# num_classes), num_blocks=1 by default) are plain state_dicts without bearpaw's ``module.``.
# (anibali's repository is not in the code index; its model.py was read in copies that keep its
# model_urls: mmaaz60/pytorch-stacked-hourglass and P0lyFish/pose-estimation,
# stacked_hourglass/model.py.)
# --------------------------------------------------------------------------------------------

BEARPAW_EXPANSION = 2  # Bottleneck.expansion


class BearpawBottleneck(nn.Module):
    """pose/models/hourglass.py ``Bottleneck(inplanes, planes, stride=1, downsample=None)``.

    ``bn1(inplanes) → relu → conv1 1x1 (inplanes→planes, bias=True) → bn2 → relu → conv2 3x3 pad 1
    (bias=True) → bn3 → relu → conv3 1x1 (planes→2·planes, bias=True)``, plus ``downsample(x)``
    (a Sequential holding one biased 1x1 conv, on the raw input) or the identity. Only stride 1 is
    ever built.
    """

    def __init__(self, inplanes, planes, downsample=None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=True)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1, bias=True)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * BEARPAW_EXPANSION, kernel_size=1, bias=True)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return out + (x if self.downsample is None else self.downsample(x))


class BearpawHourglass(nn.Module):
    """pose/models/hourglass.py ``Hourglass(block, num_blocks, planes, depth)``.

    ``hg`` is a ModuleList of ``depth`` ModuleLists; ``hg[i]`` holds 3 groups of ``num_blocks``
    Bottleneck(2·planes, planes) (4 groups when i == 0). ``_hour_glass_forward(n, x)`` uses
    ``hg[n - 1]``: up1 = [0](x); low1 = [1](max_pool2d(x, 2, stride=2)); low2 = recursion at n - 1,
    or [3](low1) at n == 1; low3 = [2](low2); out = up1 + nearest_upsample_2x(low3). So ``hg[3]``
    is the outermost level and ``hg[0][3]`` the innermost low2.
    """

    def __init__(self, num_blocks, planes, depth, upsample="module"):
        super().__init__()
        self.depth = depth
        if upsample == "module":  # bearpaw: self.upsample = nn.UpsamplingNearest2d(scale_factor=2)
            self.upsample = nn.UpsamplingNearest2d(scale_factor=2)
        else:  # anibali: F.interpolate(low3, scale_factor=2) in the forward
            self.upsample = lambda t: F.interpolate(t, scale_factor=2)
        self.hg = nn.ModuleList([
            nn.ModuleList([self._make_residual(num_blocks, planes) for _ in range(4 if i == 0 else 3)])
            for i in range(depth)])

    @staticmethod
    def _make_residual(num_blocks, planes):
        return nn.Sequential(*[BearpawBottleneck(planes * BEARPAW_EXPANSION, planes) for _ in range(num_blocks)])

    def _hour_glass_forward(self, n, x):
        up1 = self.hg[n - 1][0](x)
        low1 = self.hg[n - 1][1](F.max_pool2d(x, 2, stride=2))
        low2 = self._hour_glass_forward(n - 1, low1) if n > 1 else self.hg[n - 1][3](low1)
        return up1 + self.upsample(self.hg[n - 1][2](low2))

    def forward(self, x):
        return self._hour_glass_forward(self.depth, x)


class BearpawHourglassNet(nn.Module):
    """pose/models/hourglass.py ``HourglassNet(Bottleneck, num_stacks=2, num_blocks=4, num_classes=16)``.

    ``inplanes = 64`` and ``num_feats = 128`` are fixed there (f = 2·128 = 256 channels); ``num_feats``
    is a parameter here only so tests can run small networks (the real value is tested too).
    ``_make_residual(block, planes, blocks)`` adds ``downsample`` (one biased 1x1 conv) when
    ``self.inplanes != 2·planes``, builds ``blocks`` Bottlenecks and sets ``self.inplanes = 2·planes``.
    Stem: ``conv1`` 7x7/2 pad 3 (3→64, bias=True) → ``bn1`` → relu → ``layer1 =
    _make_residual(block, 64, 1)`` (64→128, mid 64, projection) → ``maxpool`` 2x2 → ``layer2 =
    _make_residual(block, self.inplanes, 1)``: ``self.inplanes`` is already 128 when this line runs,
    so 128→256, mid 128, projection → ``layer3 = _make_residual(block, num_feats, 1)``: 256→256,
    mid 128, identity (NOT the Torch7 stem's Residual(128,128), Residual(128,256)).
    Per stack: ``hg[i] = Hourglass(block, num_blocks, num_feats, 4)``; ``res[i] =
    _make_residual(block, num_feats, num_blocks)``; ``fc[i] = Sequential(conv 1x1 ch→ch bias, BN,
    relu)``; ``score[i]`` = conv 1x1 ch→num_classes (bias); for i < num_stacks - 1 ``fc_[i]`` =
    conv 1x1 ch→ch and ``score_[i]`` = conv 1x1 num_classes→ch (both biased);
    ``x = x + fc_[i](y) + score_[i](score)``. forward takes NCHW, returns the list of scores.
    ``hg1/hg2/hg4/hg8`` set num_blocks 8/4/2/1.
    """

    def __init__(self, num_stacks=2, num_blocks=4, num_classes=16, num_feats=128, upsample="module"):
        super().__init__()
        self.inplanes = 64
        self.num_feats = num_feats
        self.num_stacks = num_stacks
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=True)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_residual(self.inplanes, 1)
        self.layer2 = self._make_residual(self.inplanes, 1)
        self.layer3 = self._make_residual(self.num_feats, 1)
        self.maxpool = nn.MaxPool2d(2, stride=2)
        ch = self.num_feats * BEARPAW_EXPANSION
        hg, res, fc, score, fc_, score_ = [], [], [], [], [], []
        for i in range(num_stacks):
            hg.append(BearpawHourglass(num_blocks, self.num_feats, 4, upsample))
            res.append(self._make_residual(self.num_feats, num_blocks))
            fc.append(nn.Sequential(nn.Conv2d(ch, ch, kernel_size=1, bias=True), nn.BatchNorm2d(ch), self.relu))
            score.append(nn.Conv2d(ch, num_classes, kernel_size=1, bias=True))
            if i < num_stacks - 1:
                fc_.append(nn.Conv2d(ch, ch, kernel_size=1, bias=True))
                score_.append(nn.Conv2d(num_classes, ch, kernel_size=1, bias=True))
        self.hg = nn.ModuleList(hg)
        self.res = nn.ModuleList(res)
        self.fc = nn.ModuleList(fc)
        self.score = nn.ModuleList(score)
        self.fc_ = nn.ModuleList(fc_)
        self.score_ = nn.ModuleList(score_)

    def _make_residual(self, planes, blocks):
        downsample = None
        if self.inplanes != planes * BEARPAW_EXPANSION:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * BEARPAW_EXPANSION, kernel_size=1, bias=True))
        layers = [BearpawBottleneck(self.inplanes, planes, downsample)]
        self.inplanes = planes * BEARPAW_EXPANSION
        layers += [BearpawBottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.maxpool(self.layer1(x))))
        out = []
        for i in range(self.num_stacks):
            y = self.fc[i](self.res[i](self.hg[i](x)))
            score = self.score[i](y)
            out.append(score)
            if i < self.num_stacks - 1:
                x = x + self.fc_[i](y) + self.score_[i](score)
        return out


def anibali_hg(num_stacks, num_blocks=1, num_classes=16, num_feats=128):
    """anibali's ``hg(num_stacks=, num_blocks=, num_classes=)``: bearpaw's network, F.interpolate upsampling."""
    return BearpawHourglassNet(num_stacks, num_blocks, num_classes, num_feats, upsample="interpolate")
