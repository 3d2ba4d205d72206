"""Checkpoint files: find, download, verify (SHA-256), convert (Caffe / Caffe2) and load.

This package works on :class:`~c3dfeat.specs.Checkpoint` records, files and modules only; it
never imports the model registry. Names ("model.tag") are resolved one layer up, in
:mod:`c3dfeat.zoo` (``create_model(..., pretrained=True)``, ``load_mean_cube``, the CLI's
``weights`` commands). Public API (docs/design.md "weights/"):

* :func:`find_local_file`, :func:`search_dirs` — the weights directories (see :mod:`.paths`);
* :func:`resolve_checkpoint_file` — find or download, then verify or trust on first use;
* :func:`load_checkpoint`, :func:`load_file` — strict loads into a module, returning the digest;
* :func:`load_mean_checkpoint` — a Caffe mean cube;
* :func:`import_file`, :func:`checkpoint_status`, :func:`convert_file` — for the CLI.
"""
from c3dfeat.weights.hashing import sha256_file as sha256_file
from c3dfeat.weights.loading import (
    CheckpointStatus as CheckpointStatus,
    checkpoint_status as checkpoint_status,
    convert_file as convert_file,
    import_file as import_file,
    load_checkpoint as load_checkpoint,
    load_file as load_file,
    load_mean_checkpoint as load_mean_checkpoint,
    load_state_dict_strict as load_state_dict_strict,
    resolve_checkpoint_file as resolve_checkpoint_file,
    state_dict_from_file as state_dict_from_file,
)
from c3dfeat.weights.paths import (
    cache_dir as cache_dir,
    download_dir as download_dir,
    find_local_file as find_local_file,
    search_dirs as search_dirs,
)
from c3dfeat.weights.policy import (
    ENV_REQUIRE_HASHES as ENV_REQUIRE_HASHES,
    ENV_WEIGHTS_MIRROR as ENV_WEIGHTS_MIRROR,
    mirror_from as mirror_from,
    require_hashes_from as require_hashes_from,
)
