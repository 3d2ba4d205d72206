"""Frozen records that describe a model: its checkpoints, its preprocessing and its feature layers.

Each model family file declares these next to the architecture builder (one place per model);
everything downstream (weights, transforms, sampling, the HDF5 provenance) reads them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional, Tuple, Union

CheckpointFormat = Literal[
    "state_dict",  # torch.save of a plain state_dict (torchvision, ig65m, VMZ .pth, DavideA c3d.pickle)
    "pytorchvideo",  # torch.save of a dict whose "model_state" holds the state_dict (.pyth)
    "caffe_v1",  # C3D-v1.0 .caffemodel: V1 `layers`, C3D BlobProto numbering
    "caffe_v11",  # C3D-v1.1 .caffemodel (Res3D): `layer` = 100, BlobShape, BatchNorm + Scale
    "caffe2_pkl",  # Caffe2 latin-1 pickle of {"blobs": {name: ndarray}} (IG-65M, VMZ)
    "caffe_mean",  # C3D-v1.0 .binaryproto mean cube (not weights: feeds preprocessing)
]


@dataclass(frozen=True)
class Preprocessing:
    """How raw frames become the network's input, exactly as the checkpoint's own pipeline did it.

    Frames arrive as uint8 RGB (T, H, W, 3). The steps: resize, crop, channel order, divide by
    `divide_by`, subtract `mean` (or the mean cube), divide by `std` (`resize_input` says
    whether the division and normalization come before the resize instead).
    """

    # --- clip sampling (in frames of the native timeline, or of the `fps` timeline when set)
    clip_len: int  # frames per clip fed to the network
    frame_step: int = 1  # distance between sampled frames inside a clip (Res3D/CSN: 2)
    stride: int = 8  # distance between clip starts (C3D paper protocol: 8 = 50 % overlap)
    fps: Optional[float] = None  # resample the timeline to this rate first (torchvision: 15)
    # --- spatial
    # (H, W): resize to exactly this size; int: scale the short side to this, keep aspect ratio.
    resize: Union[Tuple[int, int], int] = (128, 171)
    crop_size: int = 112  # side of the square crop
    # "floor": offsets (H-c)//2, (W-c)//2 as Caffe/Caffe2 (8, 29 for 128x171);
    # "round": torchvision's center_crop, int(round((H-c)/2)) (8, 30 for 128x171).
    crop_rounding: Literal["floor", "round"] = "floor"
    interpolation: Literal["bilinear"] = "bilinear"
    antialias: bool = False
    # "torch": F.interpolate's float bilinear; "opencv": cv::resize INTER_LINEAR on the uint8
    # frame, OpenCV's fixed-point filter reproduced bit for bit (c3dfeat/resize.py): the Caffe models.
    resize_backend: Literal["torch", "opencv"] = "torch"
    # What the resize runs on, i.e. where the checkpoint's own pipeline divides and normalizes:
    # "pixels": 0-255 values, scaling after the crop (OpenCV; torchvision's preset on the uint8 video);
    # "divided": x / divide_by (ig65m's and VMZ's ToTensor come before their resize);
    # "normalized": (x / divide_by - mean) / std (pytorchvideo's hub transform normalizes first).
    resize_input: Literal["pixels", "divided", "normalized"] = "pixels"
    # Round resized "pixels" to whole uint8 levels (half to even), as a resize of a uint8 image does
    # (torchvision's F.resize on uint8; OpenCV's output is always uint8).
    quantize_resize: bool = True
    # --- pixel values
    channel_order: Literal["RGB", "BGR"] = "RGB"
    divide_by: float = 255.0  # x / divide_by, as the references divide (1.0 keeps 0-255 units)
    mean: Tuple[float, float, float] = (0.0, 0.0, 0.0)  # in divided units, in `channel_order`
    std: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    # Name of a "caffe_mean" checkpoint of the same model whose (C, T, H, W) mean cube replaces
    # `mean` once imported; until then `mean` is the documented per-channel approximation.
    mean_cube: Optional[str] = None
    notes: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Checkpoint:
    """One published weights file (or mean file) of a model."""

    tag: str  # "sports1m", "kinetics400", "ig65m_32f" ... (the part after the dot in "model.tag")
    file_name: str  # name in the weights directory
    urls: Tuple[str, ...]  # mirrors, tried in order
    format: CheckpointFormat
    num_classes: int  # 0 for a mean file
    dataset: str  # "sports1m", "kinetics400", "ig65m", ...
    sha256: Optional[str] = None  # full digest, when known
    sha256_prefix: Optional[str] = None  # the prefix published in the file name (torch.hub style)
    labels: Optional[str] = None  # where the class names come from (URL or description)
    # Overrides of the model's preprocessing that this checkpoint needs (e.g. clip_len=32).
    preprocessing: Tuple[Tuple[str, Any], ...] = ()
    # Name of the source format a converter reads to produce this checkpoint (if not loadable as is).
    source: str = ""
    notes: str = ""

    @property
    def is_weights(self) -> bool:
        return self.format != "caffe_mean"


@dataclass(frozen=True)
class LayerSpec:
    """A named feature layer. `shape` is per clip, for the model's canonical input size."""

    name: str  # canonical: conv5b, pool5, fc6, fc7, res5, logits ...
    shape: Tuple[int, ...]  # e.g. (4096,) or (512, 1, 7, 7)
    aliases: Tuple[str, ...] = ()  # the original framework's names ("fc6-1", "final_avg")
    description: str = ""

    @property
    def dim(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass(frozen=True)
class ModelSpec:
    """Everything about one architecture, and (when resolved) one of its checkpoints."""

    name: str  # architecture name: "c3d", "r2plus1d_34", ...
    builder: Callable[..., Any]  # builder(num_classes=...) -> nn.Module
    checkpoints: Tuple[Checkpoint, ...]  # first weights checkpoint = default
    preprocessing: Preprocessing  # the architecture's default preprocessing
    layers: Tuple[LayerSpec, ...]  # in forward order
    default_layer: str
    input_size: Tuple[int, int, int]  # canonical (T, H, W) the layer shapes refer to
    description: str = ""
    paper: str = ""
    # Set by `resolve()`: the chosen checkpoint (None = no published weights / random init).
    checkpoint: Optional[Checkpoint] = field(default=None, compare=False)

    # ------------------------------------------------------------------ helpers
    @property
    def full_name(self) -> str:
        return f"{self.name}.{self.checkpoint.tag}" if self.checkpoint else self.name

    @property
    def weight_checkpoints(self) -> Tuple[Checkpoint, ...]:
        return tuple(c for c in self.checkpoints if c.is_weights)

    @property
    def num_classes(self) -> int:
        if self.checkpoint is not None:
            return self.checkpoint.num_classes
        ws = self.weight_checkpoints
        return ws[0].num_classes if ws else 400

    def get_checkpoint(self, tag: str) -> Checkpoint:
        from c3dfeat.errors import UnknownModelError

        for c in self.checkpoints:
            if c.tag == tag:
                return c
        tags = ", ".join(c.tag for c in self.checkpoints) or "(none)"
        raise UnknownModelError(f"model {self.name!r} has no checkpoint {tag!r}; known tags: {tags}")

    def resolve(self, tag: Optional[str] = None) -> "ModelSpec":
        """This spec with `checkpoint` set (default: the first weights checkpoint) and the
        checkpoint's preprocessing overrides applied."""
        if tag is None:
            ws = self.weight_checkpoints
            if not ws:
                return self
            ckpt = ws[0]
        else:
            ckpt = self.get_checkpoint(tag)
        pre = dataclasses.replace(self.preprocessing, **dict(ckpt.preprocessing))
        spec = dataclasses.replace(self, checkpoint=ckpt, preprocessing=pre)
        size = (pre.clip_len, pre.crop_size, pre.crop_size)
        if size != self.input_size:
            # The checkpoint's own clip (e.g. R(2+1)D-34 8 vs 32 frames) is its canonical input;
            # the registry re-derives the layer shapes from the architecture (records stay leaves).
            spec = dataclasses.replace(spec, input_size=size)
        return spec

    def layer(self, name: str) -> LayerSpec:
        """The layer called `name` (canonical or alias, case-insensitive)."""
        from c3dfeat.errors import UnknownLayerError

        key = name.lower()
        for layer in self.layers:
            if key == layer.name.lower() or key in (a.lower() for a in layer.aliases):
                return layer
        valid = ", ".join(
            layer.name + (f" ({'/'.join(layer.aliases)})" if layer.aliases else "") for layer in self.layers
        )
        raise UnknownLayerError(f"model {self.name!r} has no layer {name!r}; valid layers: {valid}")

    def layer_shape(self, name: str) -> Tuple[int, ...]:
        """Per-clip shape of a layer at `input_size` (logits follow the checkpoint's classes)."""
        layer = self.layer(name)
        return (self.num_classes,) if layer.name == "logits" else layer.shape

    def canonical_layers(self, names) -> Tuple[str, ...]:
        """Canonical names for `names`, deduplicated, in forward order."""
        wanted = {self.layer(n).name for n in names}
        return tuple(layer.name for layer in self.layers if layer.name in wanted)


# --- extraction choices shared by the API (c3dfeat.extract) and the CLI's options. They live in
# this torch-free leaf so that `c3dfeat --help` lists them without importing torch.
COMPUTE_DTYPES: Tuple[str, ...] = ("fp32", "bf16", "fp16")  # `dtype`: compute dtype; fp32 is exact
STORAGE_DTYPES: Tuple[str, ...] = ("float32", "float16")  # `storage_dtype` of stored features
CROP_MODES: Tuple[Union[str, int], ...] = ("center", 3, 10)  # `crops`: the crop mode
CROP_REDUCTIONS: Tuple[str, ...] = ("mean", "none")  # `crop_reduce`: average the crops or keep each
# `worker_kind`: decoders in forked processes, in threads, or "auto" (processes where fork is safe)
WORKER_KINDS: Tuple[str, ...] = ("auto", "process", "thread")
