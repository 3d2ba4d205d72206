"""C3D (Tran et al., ICCV 2015), Sports-1M, exactly as the Caffe C3D-v1.0 network computes it.

Differences from the popular PyTorch ports, all deliberate (models.md §1, §8):
* every pool rounds its output size up like Caffe's Pooling3D (`ceil_mode=True`); at 16x112x112
  this only matters for pool5, whose windows are {0,1},{2,3},{4,5},{6} — not the symmetric
  `padding=(0, 1, 1)` of DavideA/mmaction2, which gives different numbers;
* fc6 / fc7 features are taken after ReLU, because Caffe's relu6/relu7 run in place on `fc6-1`;
* input is BGR in 0-255 units minus the Sports-1M mean cube, cropped at offsets (8, 29).
"""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn as nn

from c3dfeat.models._common import SPORTS1M_LABELS as _SPORTS1M_LABELS
from c3dfeat.models._layers import ClipSizeError, LayerwiseModel, Step
from c3dfeat.models._registry import register_model
from c3dfeat.specs import Checkpoint, LayerSpec, ModelSpec, Preprocessing

__all__ = ["C3D"]

_CONVS = (  # (name, in, out, pool after it: kernel or None)
    ("conv1", 3, 64, (1, 2, 2)),
    ("conv2", 64, 128, (2, 2, 2)),
    ("conv3a", 128, 256, None),
    ("conv3b", 256, 256, (2, 2, 2)),
    ("conv4a", 256, 512, None),
    ("conv4b", 512, 512, (2, 2, 2)),
    ("conv5a", 512, 512, None),
    ("conv5b", 512, 512, (2, 2, 2)),
)
_POOL_NAMES = {"conv1": "pool1", "conv2": "pool2", "conv3b": "pool3", "conv4b": "pool4", "conv5b": "pool5"}


class C3D(LayerwiseModel):
    """C3D with the DavideA `c3d.pickle` key names (conv1 ... conv5b, fc6, fc7, fc8)."""

    layer_names = ("conv5b", "pool5", "fc6", "fc7", "logits")

    def __init__(self, num_classes: int = 487) -> None:
        super().__init__()
        for name, cin, cout, pool in _CONVS:
            self.add_module(name, nn.Conv3d(cin, cout, kernel_size=3, padding=1))
            if pool is not None:
                # Caffe Pooling3D: output = ceil((in - k) / s) + 1, windows clipped at the far edge.
                self.add_module(_POOL_NAMES[name], nn.MaxPool3d(pool, stride=pool, ceil_mode=True))
        self.fc6 = nn.Linear(8192, 4096)
        self.fc7 = nn.Linear(4096, 4096)
        self.fc8 = nn.Linear(4096, num_classes)
        self.relu = nn.ReLU(inplace=True)  # outputs are fresh tensors: in place is safe and cheaper

    def _block(self, names: Sequence[str]):
        def run(x: torch.Tensor) -> torch.Tensor:
            for name in names:
                x = self.relu(getattr(self, name)(x))
                if name in _POOL_NAMES and name != "conv5b":
                    x = getattr(self, _POOL_NAMES[name])(x)
            return x

        return run

    def _fc6(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1:] != (512, 1, 4, 4):
            raise ClipSizeError(
                f"C3D's fc6 needs a 512x1x4x4 pool5 (16x112x112 clips); got {tuple(x.shape[1:])} "
                "- use conv5b/pool5 for other clip sizes"
            )
        return self.relu(self.fc6(x.flatten(1)))  # relu6 in place; drop6 is the identity at test time

    def _steps(self) -> List[Step]:
        return [
            ("conv5b", self._block([c[0] for c in _CONVS])),  # after relu5b, before pool5
            ("pool5", self.get_submodule("pool5")),
            ("fc6", self._fc6),
            ("fc7", lambda x: self.relu(self.fc7(x))),
            ("logits", self.fc8),
        ]


C3D_SPEC = register_model(
    ModelSpec(
        name="c3d",
        builder=C3D,
        description="C3D, 8 conv + 2 fc layers, Sports-1M (Caffe C3D-v1.0)",
        paper="Tran et al., Learning Spatiotemporal Features with 3D Convolutional Networks, ICCV 2015",
        input_size=(16, 112, 112),
        checkpoints=(
            Checkpoint(
                tag="sports1m",
                file_name="conv3d_deepnetA_sport1m_iter_1900000",
                urls=(
                    "http://vlg.cs.dartmouth.edu/c3d/conv3d_deepnetA_sport1m_iter_1900000",
                    "https://www.dropbox.com/s/vr8ckp0pxgbldhs/conv3d_deepnetA_sport1m_iter_1900000?dl=1",
                ),
                format="caffe_v1",
                num_classes=487,
                dataset="sports1m",
                labels=_SPORTS1M_LABELS,
                notes="the authors' Caffe model; converted on load (no Caffe needed)",
            ),
            Checkpoint(
                tag="davidea",
                file_name="c3d.pickle",
                urls=("http://imagelab.ing.unimore.it/files/c3d_pytorch/c3d.pickle",),
                format="state_dict",
                num_classes=487,
                dataset="sports1m",
                labels=_SPORTS1M_LABELS,
                notes="DavideA/c3d-pytorch port via Keras/Theano; equality with the Caffe model unverified",
            ),
            Checkpoint(
                tag="sports1m_mean",
                file_name="sport1m_train16_128_mean.binaryproto",
                urls=(
                    "https://github.com/facebookarchive/C3D/raw/master/C3D-v1.0/examples/"
                    "c3d_feature_extraction/sport1m_train16_128_mean.binaryproto",
                ),
                format="caffe_mean",
                num_classes=0,
                dataset="sports1m",
                notes="3x16x128x171 BGR volume mean subtracted before the crop",
            ),
        ),
        preprocessing=Preprocessing(
            clip_len=16,
            frame_step=1,
            stride=8,  # the paper's video descriptor: 16-frame clips overlapping by 8
            resize=(128, 171),  # cv::resize to 171x128, INTER_LINEAR
            resize_backend="opencv",  # its fixed-point uint8 filter, bit for bit (c3dfeat/resize.py)
            crop_size=112,
            crop_rounding="floor",  # Caffe: h_off = (128-112)/2 = 8, w_off = (171-112)/2 = 29
            channel_order="BGR",  # OpenCV decodes BGR; conv1's input channels are B, G, R
            divide_by=1.0,  # 0-255 units, no std
            # Per-channel approximation of the Sports-1M mean cube (B, G, R), used only until the
            # real `sports1m_mean` file is imported (c3d-pytorch #4).
            mean=(90.25, 97.66, 101.41),
            mean_cube="sports1m_mean",
            notes="mean=(90.25, 97.66, 101.41) is the per-channel APPROXIMATION of the mean cube",
        ),
        layers=(
            LayerSpec("conv5b", (512, 2, 7, 7), description="last conv, after ReLU"),
            LayerSpec("pool5", (512, 1, 4, 4), description="ceil-mode max pool, flattened = fc6 input (8192)"),
            LayerSpec("fc6", (4096,), aliases=("fc6-1",), description="after ReLU (Caffe in-place relu6)"),
            LayerSpec("fc7", (4096,), aliases=("fc7-1",), description="after ReLU (Caffe in-place relu7)"),
            LayerSpec("logits", (487,), aliases=("fc8-1", "fc8"), description="before softmax"),
        ),
        default_layer="fc6",
    )
)
