"""c3dfeat: spatiotemporal features from the published 3D ConvNets, in one HDF5 file."""
from c3dfeat.errors import C3DFeatError as C3DFeatError
from c3dfeat.models import (
    create_model as create_model,
    extract_layers as extract_layers,
    get_spec as get_spec,
    list_models as list_models,
)
from c3dfeat.version import __version__ as __version__

# Python API of `c3dfeat extract` (the pipeline module) and the feature-file reader.
from c3dfeat.pipeline import extract as extract  # noqa: E402
from c3dfeat.store import FeatureFile as FeatureFile  # noqa: E402

# Python API of `c3dfeat linear-eval` (the papers' linear-SVM protocol on a feature file).
from c3dfeat.evaluate import evaluate_features as evaluate_features  # noqa: E402
