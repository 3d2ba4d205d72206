"""Res3D (C3D-v1.1 "C3D-ResNet18-Sports1M"), the ResNet-18 of Tran et al. 2017 (models.md §2).

The Caffe prototxt maps onto torchvision's `r3d_18` topology (3x7x7 stem without pool, BasicBlocks
of 3x3x3 convs, stride 2 in T, H and W in layers 2-4) with two differences: `res2a_branch1`, a
1x1x1 projection shortcut (conv + BN) even in layer1.0, and a 487-way Sports-1M classifier.
Caffe's BatchNorm + Scale pair is one BatchNorm3d (eps 1e-5, the C3D-v1.1 default); no conv has
a bias. The parameter count matches the prototxt's exactly (33,420,327).

Input: BGR in 0-255 units minus 128 (a scalar, not a mean cube), 8 frames at sampling rate 2.
"""
from __future__ import annotations

from c3dfeat.models._common import LOGITS_ALIASES, SPORTS1M_LABELS
from c3dfeat.models._registry import register_model
from c3dfeat.models._resnet import VideoResNet
from c3dfeat.specs import Checkpoint, LayerSpec, ModelSpec, Preprocessing

__all__ = ["res3d_18"]


def res3d_18(num_classes: int = 487) -> VideoResNet:
    return VideoResNet(
        block="basic",
        layers=(2, 2, 2, 2),
        convs=("3d",) * 4,
        bn_eps=1e-5,
        project_first=True,  # res2a_branch1 (models.md §2.2)
        num_classes=num_classes,
    )


RES3D_SPEC = register_model(
    ModelSpec(
        name="res3d_18",
        builder=res3d_18,
        description="Res3D / C3D-v1.1 ResNet-18, Sports-1M (Caffe)",
        paper="Tran et al., ConvNet Architecture Search for Spatiotemporal Feature Learning, arXiv:1708.05038",
        input_size=(8, 112, 112),
        checkpoints=(
            Checkpoint(
                tag="sports1m",
                file_name="c3d_resnet18_sports1m_r2_iter_2800000.caffemodel",
                urls=(
                    "https://www.dropbox.com/s/qqfrg6h44d4jb46/"
                    "c3d_resnet18_sports1m_r2_iter_2800000.caffemodel?dl=1",
                ),
                format="caffe_v11",
                num_classes=487,
                dataset="sports1m",
                labels=SPORTS1M_LABELS + " (assumed: same list and order as C3D)",
                notes="the authors' Caffe model; converted on load (no Caffe needed); no published hash",
            ),
        ),
        preprocessing=Preprocessing(
            clip_len=8,
            frame_step=2,  # `sampling_rate: 2`: frames t, t+2, ..., t+14 (§2.4)
            stride=8,  # 16-frame span, 50 % overlap as for C3D
            resize=(128, 171),
            resize_backend="opencv",  # C3D-v1.1's video data layer: cv::resize INTER_LINEAR on uint8
            crop_size=112,
            crop_rounding="floor",  # Caffe: offsets (8, 29)
            channel_order="BGR",
            divide_by=1.0,
            mean=(128.0, 128.0, 128.0),  # `mean_value: 128`, no std
        ),
        layers=(
            LayerSpec("res5", (512, 1, 7, 7), aliases=("res5b", "layer4"), description="res5b after its ReLU"),
            LayerSpec("pool5", (512,), aliases=("avgpool",),
                      description="Caffe Pooling3D AVE 7x7, depth 1 (= the global average at 112x112)"),
            LayerSpec("logits", (487,), aliases=("fc8",) + LOGITS_ALIASES, description="fc8, before `prob`"),
        ),
        default_layer="pool5",
    )
)
