"""Model zoo. Adding a model = one family file + one import line here; tests pick it up."""
# Family files register their models on import.
from c3dfeat.models import (
    c3d,  # noqa: F401
    ig65m,  # noqa: F401
    pytorchvideo_models,  # noqa: F401
    res3d,  # noqa: F401
    torchvision_resnets,  # noqa: F401
    vmz,  # noqa: F401
)
from c3dfeat.models._info import (
    gflops_per_clip as gflops_per_clip,
    layer_shapes as layer_shapes,
    model_info as model_info,
    num_params as num_params,
)
from c3dfeat.models._layers import ClipSizeError as ClipSizeError
from c3dfeat.models._layout import (
    LAYOUTS as LAYOUTS,
    default_inference_layout as default_inference_layout,
    get_inference_layout as get_inference_layout,
    set_inference_layout as set_inference_layout,
)
from c3dfeat.models._registry import (
    all_specs as all_specs,
    create_model as create_model,
    extract_layers as extract_layers,
    get_spec as get_spec,
    list_models as list_models,
    register_model as register_model,
    split_name as split_name,
)
from c3dfeat.specs import (
    Checkpoint as Checkpoint,
    LayerSpec as LayerSpec,
    ModelSpec as ModelSpec,
    Preprocessing as Preprocessing,
)
