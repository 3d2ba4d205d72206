"""torchvision's Kinetics-400 video ResNets: R3D-18, MC3-18, R(2+1)D-18 (models.md §3).

Layouts are torchvision 0.29.1 `torchvision/models/video/resnet.py`, key for key. R(2+1)D-18 keeps
torchvision's mid-width rule (computed once per block from (inplanes, planes), so block 0 of
layers 2-4 has conv2 mid 230/460/921) because its weights were trained with it — do not "fix" it.
"""
from __future__ import annotations

from c3dfeat.models._common import (
    KINETICS400_LABELS,
    KINETICS_MEAN,
    KINETICS_STD,
    LOGITS_ALIASES,
    POOL5_ALIASES,
    RES5_ALIASES,
)
from c3dfeat.models._registry import register_model
from c3dfeat.models._resnet import VideoResNet
from c3dfeat.specs import Checkpoint, LayerSpec, ModelSpec, Preprocessing

__all__ = ["r3d_18", "mc3_18", "r2plus1d_18"]

_PAPER = "Tran et al., A Closer Look at Spatiotemporal Convolutions for Action Recognition, CVPR 2018"
_URL = "https://download.pytorch.org/models/"


def r3d_18(num_classes: int = 400) -> VideoResNet:
    return VideoResNet(block="basic", layers=(2, 2, 2, 2), convs=("3d",) * 4, num_classes=num_classes)


def mc3_18(num_classes: int = 400) -> VideoResNet:
    # layer1 full 3-D, layers 2-4 spatial only (no temporal downsampling anywhere)
    return VideoResNet(block="basic", layers=(2, 2, 2, 2), convs=("3d",) + ("2d",) * 3, num_classes=num_classes)


def r2plus1d_18(num_classes: int = 400) -> VideoResNet:
    return VideoResNet(
        block="basic",
        layers=(2, 2, 2, 2),
        convs=("2plus1d",) * 4,
        stem="r2plus1d",
        mid_rule="block",
        num_classes=num_classes,
    )


# torchvision `_presets.VideoClassification` + references/video_classification (§3.4)
_PRE = Preprocessing(
    clip_len=16,
    frame_step=1,
    stride=16,  # non-overlapping 16-frame clips (v-iashin/video_features: stack 16, step 16)
    fps=15.0,  # training clips were drawn after resampling to 15 fps
    resize=(128, 171),
    crop_size=112,
    crop_rounding="round",  # torchvision center_crop: columns 30-141 (not Caffe's 29)
    antialias=False,
    channel_order="RGB",
    # VideoClassification preset: F.resize on the uint8 video (rounded back to uint8), crop,
    # convert_image_dtype (x / 255), normalize
    divide_by=255.0,
    mean=KINETICS_MEAN,
    std=KINETICS_STD,
)


def _spec(name, builder, file_name, prefix, res5_shape, description) -> ModelSpec:
    return ModelSpec(
        name=name,
        builder=builder,
        description=description,
        paper=_PAPER,
        input_size=(16, 112, 112),
        checkpoints=(
            Checkpoint(
                tag="kinetics400",
                file_name=file_name,
                urls=(_URL + file_name,),
                format="state_dict",
                num_classes=400,
                dataset="kinetics400",
                sha256_prefix=prefix,  # torch.hub checks it (check_hash=True), §0.2
                labels=KINETICS400_LABELS,
            ),
        ),
        preprocessing=_PRE,
        layers=(
            LayerSpec("res5", res5_shape, aliases=RES5_ALIASES, description="layer4 output, after ReLU"),
            LayerSpec("pool5", (512,), aliases=POOL5_ALIASES, description="global average of res5 (fc input)"),
            LayerSpec("logits", (400,), aliases=LOGITS_ALIASES, description="fc output, before softmax"),
        ),
        default_layer="pool5",
    )


register_model(
    _spec("r3d_18", r3d_18, "r3d_18-b3b3357e.pth", "b3b3357e", (512, 2, 7, 7), "R3D-18, Kinetics-400 (torchvision)")
)
register_model(
    _spec("mc3_18", mc3_18, "mc3_18-a90a0ba3.pth", "a90a0ba3", (512, 16, 7, 7), "MC3-18, Kinetics-400 (torchvision)")
)
register_model(
    _spec(
        "r2plus1d_18",
        r2plus1d_18,
        "r2plus1d_18-91a641e6.pth",
        "91a641e6",
        (512, 2, 7, 7),
        "R(2+1)D-18, Kinetics-400 (torchvision)",
    )
)
