"""The one-pass, stop-early feature machinery shared by every model family."""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from c3dfeat.errors import C3DFeatError, UnknownLayerError
from c3dfeat.models._common import FeatureModel
from c3dfeat.models._layout import prepare_input


class ClipSizeError(C3DFeatError, ValueError):
    """The clip does not fit a fixed-size layer of the reference network (C3D's fc6 wants an
    8192-d pool5, pytorchvideo's head a (4,7,7) pooling window)."""

# A forward pass as an ordered list of steps `(name, fn)` or `(name, fn, tap)`: `fn` maps the
# running tensor on; a step that produces a feature layer names it, and `tap` (optional) derives
# the emitted feature from fn's output without changing what flows on (pytorchvideo's pool5).
Fn = Callable[[torch.Tensor], torch.Tensor]
Step = Union[Tuple[Optional[str], Fn], Tuple[Optional[str], Fn, Fn]]


class LayerwiseModel(FeatureModel):
    """Base for models that expose named feature layers.

    Subclasses list their forward pass in `_steps()`; `forward_layers` runs it once and stops after
    the deepest requested layer, so layers past it cost nothing.
    """


    def _steps(self) -> List[Step]:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_layers(self, x: torch.Tensor, layers: Sequence[str]) -> Dict[str, torch.Tensor]:
        """Canonical layers in `layers` from one pass; stops after the deepest one."""
        wanted = set(layers)
        unknown = wanted - set(self.layer_names)
        if unknown:
            raise UnknownLayerError(
                f"{type(self).__name__} has no layer(s) {sorted(unknown)}; valid: {', '.join(self.layer_names)}"
            )
        out: Dict[str, torch.Tensor] = {}
        if not wanted:
            return out
        # The model's inference layout (models/_layout.py): every caller gets the same kernels.
        x = prepare_input(self, x)
        for step in self._steps():
            name, fn = step[0], step[1]
            x = fn(x)
            if name in wanted:
                out[name] = step[2](x) if len(step) > 2 else x
                if len(out) == len(wanted):
                    break
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (before any softmax)."""
        return self.forward_layers(x, ["logits"])["logits"]
