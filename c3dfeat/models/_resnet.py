"""One parameterised VideoResNet trunk with torchvision's module names.

torchvision's `VideoResNet` is the layout that torchvision (R3D/MC3/R(2+1)D-18), ig65m-pytorch
(R(2+1)D-34) and VMZ's PyTorch port (CSN-152, R(2+1)D-152) all wrote their checkpoints for, so one
builder with a few switches reproduces every one of them key for key (models.md §2-§5):

* `conv`: the per-layer 3x3x3 replacement — "3d" (Conv3DSimple), "2d" (Conv3DNoTemporal, MC3),
  "2plus1d" (spatial (1,3,3) then temporal (3,1,1)), "ir_csn" (depthwise 3x3x3), "ip_csn"
  (1x1x1 conv + BN + depthwise, no ReLU between them);
* `mid_rule`: R(2+1)D mid width ⌊in·out·27 / (in·9 + 3·out)⌋ computed once per block from
  (inplanes, planes) and reused by both convs ("block", torchvision), or per conv from that conv's
  own in/out ("conv", Caffe2 / IG-65M / VMZ: 288/576/1152 in block 0's conv2 of layers 2-4);
* `stem`: "basic" (3x7x7) or "r2plus1d" (45-channel factorised), optionally followed by the
  (1,3,3)/(1,2,2) max-pool (CSN, R(2+1)D-152);
* BatchNorm eps / momentum (torchvision 1e-5 / 0.1; Caffe2 ports 1e-3 / 0.9 — momentum only
  matters when fine-tuning);
* `project_first`: a 1x1x1 projection shortcut even in layer1.0 (Caffe Res3D's res2a_branch1).
"""
from __future__ import annotations

from typing import List, Literal, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn as nn

from c3dfeat.models._layers import LayerwiseModel, Step

ConvKind = Literal["3d", "2d", "2plus1d", "ir_csn", "ip_csn"]
MidRule = Literal["block", "conv"]


def r2plus1d_mid(cin: int, cout: int) -> int:
    """Mid width that matches the parameter count of a full 3x3x3 conv (Tran et al. 2018, §3.5)."""
    return (cin * cout * 3 * 3 * 3) // (cin * 3 * 3 + 3 * cout)


class _Norm:
    """BatchNorm3d factory with the family's eps / momentum."""

    def __init__(self, eps: float, momentum: float) -> None:
        self.eps, self.momentum = eps, momentum

    def __call__(self, c: int) -> nn.BatchNorm3d:
        return nn.BatchNorm3d(c, eps=self.eps, momentum=self.momentum)


def make_conv(kind: ConvKind, cin: int, cout: int, mid: int, stride: int, norm: _Norm) -> nn.Module:
    """The block's main conv (without its trailing BN), keyed exactly like the reference."""
    s = stride
    if kind == "3d":
        return nn.Conv3d(cin, cout, 3, stride=(s, s, s), padding=1, bias=False)
    if kind == "2d":
        return nn.Conv3d(cin, cout, (1, 3, 3), stride=(1, s, s), padding=(0, 1, 1), bias=False)
    if kind == "2plus1d":
        return nn.Sequential(
            nn.Conv3d(cin, mid, (1, 3, 3), stride=(1, s, s), padding=(0, 1, 1), bias=False),
            norm(mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(mid, cout, (3, 1, 1), stride=(s, 1, 1), padding=(1, 0, 0), bias=False),
        )
    if kind == "ir_csn":
        return nn.Conv3d(cin, cout, 3, stride=(s, s, s), padding=1, groups=cin, bias=False)
    if kind == "ip_csn":
        # Caffe2 block type "0.3d": no ReLU between the 1x1x1 conv and the depthwise conv (§5.2).
        return nn.Sequential(
            nn.Conv3d(cin, cout, 1, bias=False),
            norm(cout),
            nn.Conv3d(cout, cout, 3, stride=(s, s, s), padding=1, groups=cout, bias=False),
        )
    raise ValueError(f"unknown conv kind {kind!r}")


def downsample_stride(kind: ConvKind, stride: int) -> Tuple[int, int, int]:
    # Shortcut stride follows the conv's own stride: MC3's 2-D convs never stride in time.
    return (1, stride, stride) if kind == "2d" else (stride, stride, stride)


def _mid(kind: ConvKind, rule: MidRule, block_in: int, planes: int, cin: int, cout: int) -> int:
    if kind != "2plus1d":
        return 0
    return r2plus1d_mid(block_in, planes) if rule == "block" else r2plus1d_mid(cin, cout)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        kind: ConvKind,
        rule: MidRule,
        stride: int,
        downsample: Optional[nn.Module],
        norm: _Norm,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            make_conv(kind, inplanes, planes, _mid(kind, rule, inplanes, planes, inplanes, planes), stride, norm),
            norm(planes),
            nn.ReLU(inplace=True),
        )
        self.conv2 = nn.Sequential(
            make_conv(kind, planes, planes, _mid(kind, rule, inplanes, planes, planes, planes), 1, norm),
            norm(planes),
        )
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.conv2(self.conv1(x))
        return self.relu(out + residual)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        kind: ConvKind,
        rule: MidRule,
        stride: int,
        downsample: Optional[nn.Module],
        norm: _Norm,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv3d(inplanes, planes, 1, bias=False), norm(planes), nn.ReLU(inplace=True))
        self.conv2 = nn.Sequential(
            make_conv(kind, planes, planes, _mid(kind, rule, inplanes, planes, planes, planes), stride, norm),
            norm(planes),
            nn.ReLU(inplace=True),
        )
        self.conv3 = nn.Sequential(nn.Conv3d(planes, planes * 4, 1, bias=False), norm(planes * 4))
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.conv3(self.conv2(self.conv1(x)))
        return self.relu(out + residual)


def make_stem(kind: Literal["basic", "r2plus1d"], pool: bool, norm: _Norm) -> nn.Sequential:
    if kind == "basic":
        mods: List[nn.Module] = [
            nn.Conv3d(3, 64, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
            norm(64),
            nn.ReLU(inplace=True),
        ]
    else:  # R2Plus1dStem: (1,7,7) 3->45, then (3,1,1) 45->64
        mods = [
            nn.Conv3d(3, 45, (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
            norm(45),
            nn.ReLU(inplace=True),
            nn.Conv3d(45, 64, (3, 1, 1), stride=(1, 1, 1), padding=(1, 0, 0), bias=False),
            norm(64),
            nn.ReLU(inplace=True),
        ]
    if pool:  # VMZ use_pool1 (models.md §5.2); parameter-free, so keys are unchanged
        mods.append(nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)))
    return nn.Sequential(*mods)


class VideoResNet(LayerwiseModel):
    """torchvision-layout video ResNet: stem, layer1-4, avgpool, fc.

    Feature layers: `res5` (layer4 output map), `pool5` (global average, flattened), `logits` (fc).
    """

    layer_names = ("res5", "pool5", "logits")
    # set with add_module in __init__; declared so the type checker knows them
    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    def __init__(
        self,
        *,
        block: Literal["basic", "bottleneck"],
        layers: Sequence[int],
        convs: Sequence[ConvKind],
        stem: Literal["basic", "r2plus1d"] = "basic",
        stem_pool: bool = False,
        mid_rule: MidRule = "block",
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
        project_first: bool = False,
        num_classes: int = 400,
    ) -> None:
        super().__init__()
        norm = _Norm(bn_eps, bn_momentum)
        block_cls: Type[Union[BasicBlock, Bottleneck]] = BasicBlock if block == "basic" else Bottleneck
        self.stem = make_stem(stem, stem_pool, norm)
        inplanes = 64
        for i, (n, kind, planes) in enumerate(zip(layers, convs, (64, 128, 256, 512))):
            stride = 1 if i == 0 else 2
            blocks: List[nn.Module] = []
            for b in range(n):
                s = stride if b == 0 else 1
                downsample: Optional[nn.Module] = None
                if b == 0 and (s != 1 or inplanes != planes * block_cls.expansion or project_first):
                    downsample = nn.Sequential(
                        nn.Conv3d(
                            inplanes, planes * block_cls.expansion, 1, stride=downsample_stride(kind, s), bias=False
                        ),
                        norm(planes * block_cls.expansion),
                    )
                blocks.append(block_cls(inplanes, planes, kind, mid_rule, s, downsample, norm))
                inplanes = planes * block_cls.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool3d((1, 1, 1))
        self.fc = nn.Linear(inplanes, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's VideoResNet init, so a random-init model behaves like the reference's.
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.constant_(m.bias, 0)

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def _steps(self) -> List[Step]:
        return [
            ("res5", self._trunk),
            ("pool5", lambda x: self.avgpool(x).flatten(1)),
            ("logits", self.fc),
        ]
