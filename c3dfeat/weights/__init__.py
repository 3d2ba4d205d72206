"""Checkpoint files: find, download, verify (SHA-256), convert (Caffe / Caffe2) and load.

Public API (docs/design.md "weights/"):
* :func:`find_local_file` — the search order of weights directories (see :mod:`.paths`);
* :func:`load_pretrained` — used by ``create_model(..., pretrained=True|path)``;
* :func:`load_mean_cube` — the C3D Sports-1M mean cube for the transforms;
* :func:`download`, :func:`import_file`, :func:`checkpoint_status`, :func:`convert_file` — for the CLI.
"""
from c3dfeat.weights.hashing import sha256_file as sha256_file
from c3dfeat.weights.loading import (
    CheckpointStatus as CheckpointStatus,
    all_checkpoints as all_checkpoints,
    checkpoint_status as checkpoint_status,
    convert_file as convert_file,
    import_file as import_file,
    load_mean_cube as load_mean_cube,
    load_pretrained as load_pretrained,
    load_state_dict_strict as load_state_dict_strict,
    resolve_checkpoint_file as resolve_checkpoint_file,
    state_dict_from_file as state_dict_from_file,
    statuses as statuses,
)
from c3dfeat.weights.paths import (
    cache_dir as cache_dir,
    download_dir as download_dir,
    find_local_file as find_local_file,
    search_dirs as search_dirs,
)


def download(name: str, weights_dir=None, allow_unverified: bool = False, progress: bool = True):
    """Make checkpoint `name` ("model.tag" or "model" for its default) present and verified; return
    its :class:`~c3dfeat.weights.hashing.Verification` (already-present files are only verified)."""
    from c3dfeat.models import get_spec

    spec = get_spec(name)
    if spec.checkpoint is None:
        from c3dfeat.errors import WeightsError

        raise WeightsError(f"model {name!r} has no published checkpoint")
    return resolve_checkpoint_file(spec.full_name, spec.checkpoint, weights_dir, allow_unverified, progress=progress)
