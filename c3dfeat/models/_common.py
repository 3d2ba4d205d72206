"""What every model is (`FeatureModel`), and constants shared by several family files (sources in models.md)."""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from c3dfeat.specs import ModelSpec


class FeatureModel(nn.Module):
    """The type `create_model` returns: a torch module with named feature layers.

    Family models derive from it through `LayerwiseModel`; `create_model` sets `spec` and
    `weights_sha256` on every instance it builds.
    """

    #: canonical layer names in forward order (the ModelSpec declares the same list)
    layer_names: Tuple[str, ...] = ()
    #: the resolved record this instance was built from (set by `create_model`)
    spec: ModelSpec
    #: SHA-256 of the loaded weights file; None means random initialisation
    weights_sha256: Optional[str] = None

    def forward_layers(self, x: torch.Tensor, layers: Sequence[str]) -> Dict[str, torch.Tensor]:
        """Canonical layers in `layers` from one forward pass of `x` (N, C, T, H, W)."""
        raise NotImplementedError

# Kinetics RGB normalisation on [0, 1] (torchvision `_presets.VideoClassification`); Caffe2 VMZ's
# 0-255 values (110.201, 100.64, 95.9966) / (58.1489, 56.4701, 55.3324) divided by 255 agree to
# about 5 decimals (models.md §0.3).
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)

SPORTS1M_LABELS = "https://raw.githubusercontent.com/gtoderici/sports-1m-dataset/master/labels.txt"
# torchvision.models._meta._KINETICS400_CATEGORIES: 400 names sorted by code point (§3.5)
KINETICS400_LABELS = "torchvision.models._meta._KINETICS400_CATEGORIES (sorted class names)"
KINETICS400_LABELS_SHOWMAX = (
    "https://raw.githubusercontent.com/Showmax/kinetics-downloader/master/resources/classes.json"
)
KINETICS400_LABELS_PYSLOWFAST = "https://dl.fbaipublicfiles.com/pyslowfast/dataset/class_names/kinetics_classnames.json"
IG65M_LABELS = "none published (IG-65M hashtag classes; ig65m-pytorch README: no label map available)"

# ResNet-family layer aliases: the original frameworks' names for the same tensors.
RES5_ALIASES = ("layer4",)
POOL5_ALIASES = ("avgpool", "final_avg")
LOGITS_ALIASES = ("fc",)
