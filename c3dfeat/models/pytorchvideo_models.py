"""pytorchvideo's Kinetics-400 `csn_r101` and `r2plus1d_r50` (models.md §6), key for key.

pytorchvideo 0.1.5 names everything `blocks.N...` (a `Net` of stem, four `ResStage`s and a
`ResNetBasicHead`). Two semantics matter for exactness:
* the head is `AvgPool3d((4,7,7), stride 1)` -> `proj` Linear applied channels-last -> global
  average: at a 256 crop the pool leaves 1x2x2 positions, so `pool5` = the head-pool output
  averaged over them (NOT the plain mean of res5), and `logits` = proj per position, then averaged,
  in that order, as the reference does;
* the hub's r2plus1d_r50 head ends in a Softmax that runs in eval mode too; `forward` here returns
  the logits before it. (With one pooled window, at 224, the hub's output is logits.softmax(-1); at
  256 the hub averages the softmaxes of the 4 windows instead.)
R(2+1)D-50 runs the temporal conv FIRST (conv_t, norm, ReLU, conv_xy), with mid width = dim_inner:
the opposite of torchvision/VMZ.
"""
from __future__ import annotations

from typing import List, Literal, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from c3dfeat.models._common import KINETICS400_LABELS_PYSLOWFAST, LOGITS_ALIASES
from c3dfeat.models._layers import ClipSizeError, LayerwiseModel, Step
from c3dfeat.models._registry import register_model
from c3dfeat.specs import Checkpoint, LayerSpec, ModelSpec, Preprocessing

__all__ = ["PTVResNet", "csn_r101", "r2plus1d_r50"]


class Conv2plus1d(nn.Module):
    """pytorchvideo `Conv2plus1d`: conv_t (3,1,1) -> norm -> ReLU -> conv_xy (1,3,3)."""

    def __init__(self, dim: int, stride: Tuple[int, int, int]) -> None:
        super().__init__()
        self.conv_t = nn.Conv3d(dim, dim, (3, 1, 1), stride=(stride[0], 1, 1), padding=(1, 0, 0), bias=False)
        self.norm = nn.BatchNorm3d(dim)
        self.activation = nn.ReLU(inplace=True)
        self.conv_xy = nn.Conv3d(dim, dim, (1, 3, 3), stride=(1, stride[1], stride[2]), padding=(0, 1, 1), bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_xy(self.activation(self.norm(self.conv_t(x))))


class BottleneckBlock(nn.Module):
    def __init__(self, dim_in: int, dim_inner: int, dim_out: int, stride, conv_b: Literal["csn", "2plus1d"]):
        super().__init__()
        self.conv_a = nn.Conv3d(dim_in, dim_inner, 1, bias=False)
        self.norm_a = nn.BatchNorm3d(dim_inner)
        self.act_a = nn.ReLU(inplace=True)
        if conv_b == "csn":  # depthwise 3x3x3 (groups = channels): ir-CSN
            self.conv_b: nn.Module = nn.Conv3d(
                dim_inner, dim_inner, 3, stride=stride, padding=1, groups=dim_inner, bias=False
            )
        else:
            self.conv_b = Conv2plus1d(dim_inner, stride)
        self.norm_b = nn.BatchNorm3d(dim_inner)
        self.act_b = nn.ReLU(inplace=True)
        self.conv_c = nn.Conv3d(dim_inner, dim_out, 1, bias=False)
        self.norm_c = nn.BatchNorm3d(dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act_a(self.norm_a(self.conv_a(x)))
        x = self.act_b(self.norm_b(self.conv_b(x)))
        return self.norm_c(self.conv_c(x))


class ResBlock(nn.Module):
    def __init__(self, dim_in, dim_inner, dim_out, stride, conv_b):
        super().__init__()
        if dim_in != dim_out or any(s != 1 for s in stride):
            self.branch1_conv: Optional[nn.Module] = nn.Conv3d(dim_in, dim_out, 1, stride=stride, bias=False)
            self.branch1_norm: Optional[nn.Module] = nn.BatchNorm3d(dim_out)
        else:
            self.branch1_conv = self.branch1_norm = None
        self.branch2 = BottleneckBlock(dim_in, dim_inner, dim_out, stride, conv_b)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.branch1_conv is None or self.branch1_norm is None:
            shortcut = x
        else:
            shortcut = self.branch1_norm(self.branch1_conv(x))
        return self.activation(shortcut + self.branch2(x))


class ResStage(nn.Module):
    def __init__(self, blocks: Sequence[nn.Module]) -> None:
        super().__init__()
        self.res_blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.res_blocks:
            x = b(x)
        return x


class ResNetBasicStem(nn.Module):
    def __init__(self, kernel: Tuple[int, int, int], pool: bool) -> None:
        super().__init__()
        padding = (kernel[0] // 2, kernel[1] // 2, kernel[2] // 2)
        self.conv = nn.Conv3d(3, 64, kernel, stride=(1, 2, 2), padding=padding, bias=False)
        self.norm = nn.BatchNorm3d(64)
        self.activation = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)) if pool else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.activation(self.norm(self.conv(x)))
        return x if self.pool is None else self.pool(x)


class ResNetBasicHead(nn.Module):
    def __init__(self, dim_in: int, num_classes: int, pool_kernel: Tuple[int, int, int]) -> None:
        super().__init__()
        self.pool = nn.AvgPool3d(pool_kernel, stride=1)
        self.pool_kernel = tuple(pool_kernel)
        self.proj = nn.Linear(dim_in, num_classes)
        self.output_pool = nn.AdaptiveAvgPool3d(1)

    def pool_map(self, x: torch.Tensor) -> torch.Tensor:
        k = self.pool_kernel
        if any(d < kk for d, kk in zip(x.shape[2:], k)):
            raise ClipSizeError(
                f"res5 map {tuple(x.shape[2:])} is smaller than the reference head's AvgPool3d{tuple(k)}; "
                "use clips of at least the model's canonical size (see `c3dfeat models`)"
            )
        return self.pool(x)

    def logits(self, pooled: torch.Tensor) -> torch.Tensor:
        # proj channels-last on every pooled position, then the global average (reference order)
        x = self.proj(pooled.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)
        return self.output_pool(x).flatten(1)


class PTVResNet(LayerwiseModel):
    """pytorchvideo `Net` layout: blocks.0 stem, blocks.1-4 stages, blocks.5 head."""

    layer_names = ("res5", "pool5", "logits")

    def __init__(
        self,
        *,
        depths: Sequence[int],
        conv_b: Literal["csn", "2plus1d"],
        stem_kernel: Tuple[int, int, int],
        stem_pool: bool,
        spatial_strides: Sequence[int],
        temporal_strides: Sequence[int],
        head_pool: Tuple[int, int, int] = (4, 7, 7),
        num_classes: int = 400,
    ) -> None:
        super().__init__()
        blocks: List[nn.Module] = [ResNetBasicStem(stem_kernel, stem_pool)]
        dim_in, dim_out = 64, 256
        for depth, ss, ts in zip(depths, spatial_strides, temporal_strides):
            stage = []
            for i in range(depth):
                stride = (ts, ss, ss) if i == 0 else (1, 1, 1)
                stage.append(ResBlock(dim_in if i == 0 else dim_out, dim_out // 4, dim_out, stride, conv_b))
            blocks.append(ResStage(stage))
            dim_in, dim_out = dim_out, dim_out * 2
        blocks.append(ResNetBasicHead(dim_in, num_classes, head_pool))
        self.blocks = nn.ModuleList(blocks)

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks[:5]:
            x = b(x)
        return x

    def _steps(self) -> List[Step]:
        head = self.blocks[5]
        assert isinstance(head, ResNetBasicHead)  # built last in __init__ (ModuleList items are typed Module)
        return [
            ("res5", self._trunk),
            ("pool5", head.pool_map, lambda m: m.mean((2, 3, 4))),
            ("logits", head.logits),
        ]


def csn_r101(num_classes: int = 400) -> PTVResNet:
    return PTVResNet(
        depths=(3, 4, 23, 3), conv_b="csn", stem_kernel=(3, 7, 7), stem_pool=True,
        spatial_strides=(1, 2, 2, 2), temporal_strides=(1, 2, 2, 2), num_classes=num_classes,
    )


def r2plus1d_r50(num_classes: int = 400) -> PTVResNet:
    return PTVResNet(
        depths=(3, 4, 6, 3), conv_b="2plus1d", stem_kernel=(1, 7, 7), stem_pool=False,
        spatial_strides=(2, 2, 2, 2), temporal_strides=(1, 1, 2, 2), num_classes=num_classes,
    )


_URL = "https://dl.fbaipublicfiles.com/pytorchvideo/model_zoo/kinetics/"


def _pre(clip_len: int, frame_step: int) -> Preprocessing:
    # SlowFast test settings (§6.4): 30 fps, short side 256, centre crop 256, mean 0.45 / std 0.225.
    return Preprocessing(
        clip_len=clip_len,
        frame_step=frame_step,
        stride=clip_len * frame_step // 2,  # 64-frame span, 50 % overlap
        fps=30.0,
        resize=256,
        crop_size=256,
        crop_rounding="round",
        channel_order="RGB",
        # the hub tutorial's transform: x / 255.0, NormalizeVideo, then ShortSideScale (a float
        # resize of the normalized video), CenterCropVideo
        resize_input="normalized",
        quantize_resize=False,
        divide_by=255.0,
        mean=(0.45, 0.45, 0.45),
        std=(0.225, 0.225, 0.225),
    )


def _spec(name, builder, file_name, description, pre, input_size) -> ModelSpec:
    return ModelSpec(
        name=name,
        builder=builder,
        description=description,
        paper="Fan et al., PyTorchVideo: A Deep Learning Library for Video Understanding, ACM MM 2021",
        input_size=input_size,
        checkpoints=(
            Checkpoint(
                tag="kinetics400",
                file_name=file_name,
                urls=(_URL + file_name,),
                format="pytorchvideo",
                num_classes=400,
                dataset="kinetics400",
                labels=KINETICS400_LABELS_PYSLOWFAST + " (name -> index)",
                notes="torch.save dict; weights under 'model_state'; no published hash",
            ),
        ),
        preprocessing=pre,
        layers=(
            LayerSpec("res5", (2048, 4, 8, 8), aliases=("blocks.4",), description="last stage output"),
            LayerSpec(
                "pool5", (2048,), aliases=("head_pool", "blocks.5.pool"),
                description="head AvgPool3d(4,7,7) output averaged over its positions",
            ),
            LayerSpec(
                "logits", (400,), aliases=("proj", "blocks.5.proj") + LOGITS_ALIASES,
                description="proj per position, averaged; before the hub's softmax",
            ),
        ),
        default_layer="pool5",
    )


register_model(_spec("csn_r101", csn_r101, "CSN_32x2_R101.pyth", "ir-CSN-101 32x2, Kinetics-400 (pytorchvideo)",
                     _pre(32, 2), (32, 256, 256)))
register_model(_spec("r2plus1d_r50", r2plus1d_r50, "R2PLUS1D_16x4_R50.pyth",
                     "R(2+1)D-50 16x4, Kinetics-400 (pytorchvideo)", _pre(16, 4), (16, 256, 256)))
