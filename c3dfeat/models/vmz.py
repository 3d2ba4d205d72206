"""VMZ's 152-layer releases: ir-CSN-152, ip-CSN-152 (Tran et al. 2019) and R(2+1)D-152.

Layouts are VMZ's PyTorch port (`pt/vmz/models/csn.py`, `r2plus1d.py`), i.e. torchvision
`VideoResNet(Bottleneck, ..., [3, 8, 36, 3])` with (models.md §5, manifests README):
* a stem max-pool (1,3,3)/(1,2,2) (`use_pool1=True`);
* ir-CSN: depthwise 3x3x3 as conv2; ip-CSN: 1x1x1 conv + BN + depthwise 3x3x3 with NO ReLU
  between them (Caffe2 block "0.3d");
* R(2+1)D-152: factorised 45-channel stem, mid widths per conv (144/288/576/1152);
* BN eps 1e-3 (momentum 0.9 copied from Caffe2; training only).
The VMZ builders leave num_classes at 400 whatever the pre-training: the checkpoints below carry
the right class counts (359 IG-65M, 487 Sports-1M, 400 Kinetics).
"""
from __future__ import annotations

from typing import Sequence, Tuple

from c3dfeat.models._common import (
    IG65M_LABELS,
    KINETICS400_LABELS,
    KINETICS_MEAN,
    KINETICS_STD,
    LOGITS_ALIASES,
    POOL5_ALIASES,
    RES5_ALIASES,
    SPORTS1M_LABELS,
)
from c3dfeat.models._registry import register_model
from c3dfeat.models._resnet import VideoResNet
from c3dfeat.specs import Checkpoint, LayerSpec, ModelSpec, Preprocessing

__all__ = ["ir_csn_152", "ip_csn_152", "r2plus1d_152"]

_LAYERS_152 = (3, 8, 36, 3)


def ir_csn_152(num_classes: int = 359) -> VideoResNet:
    return VideoResNet(
        block="bottleneck", layers=_LAYERS_152, convs=("ir_csn",) * 4, stem_pool=True,
        bn_eps=1e-3, bn_momentum=0.9, num_classes=num_classes,
    )


def ip_csn_152(num_classes: int = 359) -> VideoResNet:
    return VideoResNet(
        block="bottleneck", layers=_LAYERS_152, convs=("ip_csn",) * 4, stem_pool=True,
        bn_eps=1e-3, bn_momentum=0.9, num_classes=num_classes,
    )


def r2plus1d_152(num_classes: int = 359) -> VideoResNet:
    # Stem pool as in VMZ's PyTorch port (use_pool1=True). The model zoo's 329.1 GFLOPs fit the
    # network WITHOUT it exactly; see docs/models.md "Open question" before trusting features.
    return VideoResNet(
        block="bottleneck", layers=_LAYERS_152, convs=("2plus1d",) * 4, stem="r2plus1d", stem_pool=True,
        mid_rule="conv", bn_eps=1e-3, bn_momentum=0.9, num_classes=num_classes,
    )


_PTH = "https://github.com/bjuncek/VMZ/releases/download/test_models/"
_CLASSES = {"ig65m": 359, "sports1m": 487, "ig65m_kinetics": 400, "sports1m_kinetics": 400}
_DATASET = {"ig65m": "ig65m", "sports1m": "sports1m", "ig65m_kinetics": "kinetics400",
            "sports1m_kinetics": "kinetics400"}
_LABELS = {
    "ig65m": IG65M_LABELS,
    "sports1m": SPORTS1M_LABELS + " (assumed: same list and order as C3D)",
    "ig65m_kinetics": KINETICS400_LABELS + " (alphabetical order assumed, models.md §9)",
    "sports1m_kinetics": KINETICS400_LABELS + " (alphabetical order assumed, models.md §9)",
}


def _checkpoints(
    pth: Sequence[Tuple[str, str]], pkl: Sequence[Tuple[str, str]]
) -> Tuple[Checkpoint, ...]:
    """`pth`: (tag, file) of the bjuncek PyTorch conversions; `pkl`: (tag, dropbox id/file)."""
    out = []
    for tag, file_name in pth:
        out.append(Checkpoint(
            tag=tag, file_name=file_name, urls=(_PTH + file_name,), format="state_dict",
            num_classes=_CLASSES[tag], dataset=_DATASET[tag], labels=_LABELS[tag],
            notes="VMZ PyTorch conversion; name ends in a job id, not a hash",
        ))
    for tag, path in pkl:
        file_name = path.split("/", 1)[1]
        out.append(Checkpoint(
            tag=tag + "_caffe2", file_name=file_name, urls=(f"https://www.dropbox.com/s/{path}?dl=1",),
            format="caffe2_pkl", num_classes=_CLASSES[tag], dataset=_DATASET[tag], labels=_LABELS[tag],
            notes="original Caffe2 release (VMZ model zoo); converted on load",
        ))
    return tuple(out)


# Caffe2 test pipeline (§5.4): RGB, short side 256, centre crop 224 (integer offsets),
# 32 frames at sampling rate 2, Kinetics mean/std.
_CSN_PRE = Preprocessing(
    clip_len=32,
    frame_step=2,
    stride=32,  # 64-frame span, 50 % overlap (VMZ `pt` feature extraction)
    resize=256,
    crop_size=224,
    crop_rounding="floor",
    channel_order="RGB",
    # VMZ pt/vmz/common/transforms.py: ToTensorVideo (/ 255.0) first, then a float resize
    resize_input="divided",
    quantize_resize=False,
    divide_by=255.0,
    mean=KINETICS_MEAN,
    std=KINETICS_STD,
)

# R(2+1)D-152 was trained like R(2+1)D-34: 128x171 -> 112, consecutive frames (model zoo: 32x112x112).
_R2P1_PRE = Preprocessing(
    clip_len=32,
    frame_step=1,
    stride=32,
    resize=(128, 171),
    crop_size=112,
    crop_rounding="floor",
    channel_order="RGB",
    # VMZ pt/vmz/common/transforms.py: ToTensorVideo (/ 255.0) first, then a float resize
    resize_input="divided",
    quantize_resize=False,
    divide_by=255.0,
    mean=KINETICS_MEAN,
    std=KINETICS_STD,
)


def _layers(res5: Tuple[int, ...], classes: int) -> Tuple[LayerSpec, ...]:
    return (
        LayerSpec("res5", res5, aliases=RES5_ALIASES, description="layer4 output, after ReLU"),
        LayerSpec("pool5", (2048,), aliases=POOL5_ALIASES, description="global average (Caffe2 final_avg)"),
        LayerSpec("logits", (classes,), aliases=LOGITS_ALIASES, description="fc output, before softmax"),
    )


_CSN_PAPER = "Tran et al., Video Classification with Channel-Separated Convolutional Networks, ICCV 2019"

register_model(ModelSpec(
    name="ir_csn_152",
    builder=ir_csn_152,
    description="ir-CSN-152 (interaction-reduced), IG-65M / Sports-1M, Kinetics fine-tuned (VMZ)",
    paper=_CSN_PAPER,
    input_size=(32, 224, 224),
    checkpoints=_checkpoints(
        [
            ("ig65m", "irCSN_152_ig65m_from_scratch_f125286141.pth"),
            ("ig65m_kinetics", "irCSN_152_ft_kinetics_from_ig65m_f126851907.pth"),
            ("sports1m", "irCSN_152_Sports1M_from_scratch_f99918785.pth"),
            ("sports1m_kinetics", "irCSN_152_ft_kinetics_from_Sports1M_f101599884.pth"),
        ],
        [
            ("ig65m", "r0kppq7ox6c57no/irCSN_152_ig65m_from_scratch_f125286141.pkl"),
            ("ig65m_kinetics", "gmd8r87l3wmkn3h/irCSN_152_ft_kinetics_from_ig65m_f126851907.pkl"),
            ("sports1m", "woh99y2hll1mlqv/irCSN_152_sports1m_from_scratch_f99918785.pkl"),
            ("sports1m_kinetics", "zuoj1aqouh6bo6k/irCSN_152_ft_kinetics_from_sports1m_f101599884.pkl"),
        ],
    ),
    preprocessing=_CSN_PRE,
    layers=_layers((2048, 4, 7, 7), 359),
    default_layer="pool5",
))

register_model(ModelSpec(
    name="ip_csn_152",
    builder=ip_csn_152,
    description="ip-CSN-152 (interaction-preserved), IG-65M / Sports-1M, Kinetics fine-tuned (VMZ)",
    paper=_CSN_PAPER,
    input_size=(32, 224, 224),
    checkpoints=_checkpoints(
        [
            ("ig65m", "ipCSN_152_ig65m_from_scratch_f130601052.pth"),
            ("ig65m_kinetics", "ipCSN_152_ft_kinetics_from_ig65m_f133090949.pth"),
            ("sports1m", "ipCSN_152_Sports1M_from_scratch_f111018543.pth"),
            ("sports1m_kinetics", "ipCSN_152_ft_kinetics_from_Sports1M_f111279053.pth"),
        ],
        [
            ("ig65m", "1ryvx8k7kzs8od6/ipCSN_152_ig65m_from_scratch_f130601052.pkl"),
            ("ig65m_kinetics", "zpp3p0vn2i7bibl/ipCSN_152_ft_kinetics_from_ig65m_f133090949.pkl"),
            ("sports1m", "70di7o7qz6gjq6x/ipCSN_152_sports1m_from_scratch_f111018543.pkl"),
            ("sports1m_kinetics", "ir7cr0hda36knux/ipCSN_152_ft_kinetics_from_sports1m_f111279053.pkl"),
        ],
    ),
    preprocessing=_CSN_PRE,
    layers=_layers((2048, 4, 7, 7), 359),
    default_layer="pool5",
))

register_model(ModelSpec(
    name="r2plus1d_152",
    builder=r2plus1d_152,
    description="R(2+1)D-152, IG-65M / Sports-1M pre-trained, Kinetics fine-tuned (VMZ)",
    paper="Ghadiyaram et al., Large-scale weakly-supervised pre-training for video action recognition, CVPR 2019",
    input_size=(32, 112, 112),
    checkpoints=_checkpoints(
        [
            ("ig65m", "r2plus1d_152_ig65m_from_scratch_f106380637.pth"),
            ("ig65m_kinetics", "r2plus1d_152_ft_kinetics_from_ig65m_f107107466.pth"),
            ("sports1m_kinetics", "r2plus1d_152_ft_kinetics_from_sports1m_f128957437.pth"),
        ],
        [
            ("ig65m", "oqdg176p7nqc84v/r2plus1d_152_ig65m_from_scratch_f106380637.pkl"),
            ("ig65m_kinetics", "tmxuae8ubo5gipy/r2plus1d_152_ft_kinetics_from_ig65m_f107107466.pkl"),
            # Sports-1M pre-training exists only as a Caffe2 pkl (VMZ's .pth URL is empty).
            ("sports1m", "w5cdqeyqukuaqt7/r2plus1d_152_sports1m_from_scratch_f127111290.pkl"),
            ("sports1m_kinetics", "twvcpe30rxuaf45/r2plus1d_152_ft_kinetics_from_sports1m_f128957437.pkl"),
        ],
    ),
    preprocessing=_R2P1_PRE,
    layers=_layers((2048, 4, 4, 4), 359),
    default_layer="pool5",
))
