"""R(2+1)D-34 of the IG-65M releases (Ghadiyaram et al. 2019; moabitcoin/ig65m-pytorch, VMZ).

torchvision `VideoResNet(BasicBlock, Conv2Plus1D, [3, 4, 6, 3], R2Plus1dStem)` with Caffe2's
mid-width rule: every (2+1)D conv computes its mid width from its OWN in/out channels, so block 0's
conv2 in layers 2-4 is 288/576/1152 wide (conv1 stays 230/460/921), and BN eps 1e-3
(models.md §4.2; VMZ issue #89, ig65m issue #5). Momentum 0.9 is Caffe2's value, copied as the
reference does (it only matters when fine-tuning).
"""
from __future__ import annotations

from c3dfeat.models._common import (
    IG65M_LABELS,
    KINETICS400_LABELS_SHOWMAX,
    KINETICS_MEAN,
    KINETICS_STD,
    LOGITS_ALIASES,
    POOL5_ALIASES,
    RES5_ALIASES,
)
from c3dfeat.models._registry import register_model
from c3dfeat.models._resnet import VideoResNet
from c3dfeat.specs import Checkpoint, LayerSpec, ModelSpec, Preprocessing

__all__ = ["r2plus1d_34"]


def r2plus1d_34(num_classes: int = 359) -> VideoResNet:
    return VideoResNet(
        block="basic",
        layers=(3, 4, 6, 3),
        convs=("2plus1d",) * 4,
        stem="r2plus1d",
        mid_rule="conv",
        bn_eps=1e-3,
        bn_momentum=0.9,
        num_classes=num_classes,
    )


_PTH = "https://github.com/moabitcoin/ig65m-pytorch/releases/download/v1.0.0/"


def _pth(tag, file_name, prefix, classes, dataset, frames, labels) -> Checkpoint:
    return Checkpoint(
        tag=tag,
        file_name=file_name,
        urls=(_PTH + file_name,),
        format="state_dict",
        num_classes=classes,
        dataset=dataset,
        # torch.hub-style prefix; the ig65m loader does not check it, but it is a SHA-256 prefix (§0.2)
        sha256_prefix=prefix,
        labels=labels,
        preprocessing=(("clip_len", frames), ("stride", frames)),
    )


def _pkl(tag, dropbox, file_name, classes, dataset, frames, labels, notes="") -> Checkpoint:
    return Checkpoint(
        tag=tag,
        file_name=file_name,
        urls=(f"https://www.dropbox.com/s/{dropbox}?dl=1",),
        format="caffe2_pkl",
        num_classes=classes,
        dataset=dataset,
        labels=labels,
        preprocessing=(("clip_len", frames), ("stride", frames)),
        notes=("original Caffe2 release (VMZ model zoo); converted on load. " + notes).strip(),
    )


_K400 = KINETICS400_LABELS_SHOWMAX + " (ig65m README; alphabetical order assumed)"

R2PLUS1D_34_SPEC = register_model(
    ModelSpec(
        name="r2plus1d_34",
        builder=r2plus1d_34,
        description="R(2+1)D-34, IG-65M pre-trained (8/32 frames) and Kinetics fine-tuned",
        paper="Ghadiyaram et al., Large-scale weakly-supervised pre-training for video action recognition, CVPR 2019",
        input_size=(32, 112, 112),
        checkpoints=(
            _pth("ig65m_32f", "r2plus1d_34_clip32_ig65m_from_scratch-449a7af9.pth", "449a7af9", 359, "ig65m", 32,
                 IG65M_LABELS),
            _pth("ig65m_8f", "r2plus1d_34_clip8_ig65m_from_scratch-9bae36ae.pth", "9bae36ae", 487, "ig65m", 8,
                 IG65M_LABELS),
            _pth("kinetics_32f", "r2plus1d_34_clip32_ft_kinetics_from_ig65m-ade133f1.pth", "ade133f1", 400,
                 "kinetics400", 32, _K400),
            _pth("kinetics_8f", "r2plus1d_34_clip8_ft_kinetics_from_ig65m-0aa0550b.pth", "0aa0550b", 400,
                 "kinetics400", 8, _K400),
            _pkl("ig65m_32f_caffe2", "eimo232tqw8mwi9/r2plus1d_34_clip32_ig65m_from_scratch_f102649996.pkl",
                 "r2plus1d_34_clip32_ig65m_from_scratch_f102649996.pkl", 359, "ig65m", 32, IG65M_LABELS),
            _pkl("ig65m_8f_caffe2", "6xwyu1az6oy4ts7/r2plus1d_34_clip8_ig65m_from_scratch_f79708462.pkl",
                 "r2plus1d_34_clip8_ig65m_from_scratch_f79708462.pkl", 487, "ig65m", 8, IG65M_LABELS),
            _pkl("kinetics_32f_caffe2",
                 "z41ff7vs0bzf6b8/r2plus1d_34_clip32_ft_kinetics_from_ig65m_%20f106169681.pkl",
                 "r2plus1d_34_clip32_ft_kinetics_from_ig65m_f106169681.pkl", 400, "kinetics400", 32, _K400,
                 "The published name has a space before 'f106169681'; stored without it."),
            _pkl("kinetics_8f_caffe2",
                 "p81twy88kwrrcop/r2plus1d_34_clip8_ft_kinetics_from_ig65m_%20f128022400.pkl",
                 "r2plus1d_34_clip8_ft_kinetics_from_ig65m_f128022400.pkl", 400, "kinetics400", 8, _K400,
                 "The published name has a space before 'f128022400'; stored without it."),
        ),
        # Native Caffe2 (VMZ) pipeline, §4.4: RGB, exactly 128x171, centre crop 112 (integer
        # offsets), Kinetics mean/std, consecutive frames at the native rate.
        preprocessing=Preprocessing(
            clip_len=32,
            frame_step=1,
            stride=32,  # ig65m `extract`: non-overlapping clips
            resize=(128, 171),
            crop_size=112,
            crop_rounding="floor",
            channel_order="RGB",
            # ig65m/transforms.py: ToTensor (/ 255.) first, then a float resize (no uint8 rounding)
            resize_input="divided",
            quantize_resize=False,
            divide_by=255.0,
            mean=KINETICS_MEAN,
            std=KINETICS_STD,
        ),
        layers=(
            LayerSpec("res5", (512, 4, 7, 7), aliases=RES5_ALIASES, description="layer4 output, after ReLU"),
            LayerSpec("pool5", (512,), aliases=POOL5_ALIASES, description="global average (Caffe2 final_avg)"),
            LayerSpec("logits", (359,), aliases=LOGITS_ALIASES, description="fc output, before softmax"),
        ),
        default_layer="pool5",
    )
)
