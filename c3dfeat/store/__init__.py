"""One HDF5 feature file: flat, chunked, resizable datasets, appended video by video, crash safe.

Layout (docs/hdf5-schema.md has the full table): a video table under ``/videos``, per model a
clip table under ``/models/<key>/clips`` and the features of each layer under
``/models/<key>/layers/<layer>/{clip_features,video_mean}``; provenance in root attributes.

Modules: ``schema`` (names, records, provenance, layout), ``files`` (lock, opening),
``recovery`` (killed writers: superblock flag, cutting uncommitted rows, repair), ``writer``,
``reader``, ``bulk`` (row copies in large slices: merge), ``exports``, ``summary``.
"""
from c3dfeat.store.bulk import merge
from c3dfeat.store.exports import export
from c3dfeat.store.reader import FeatureFile
from c3dfeat.store.recovery import _lookup3 as _lookup3, recover_file, repair
from c3dfeat.store.schema import (
    FORMAT,
    FORMAT_VERSION,
    RANDOM_INIT_WARNING,
    STATE_COMPLETE,
    STATE_INCOMPLETE,
    STATE_NEEDS_REPAIR,
    STATUS,
    ClipTable,
    LayerInfo,
    ModelInfo,
    ModelResult,
    VideoRecord,
    provenance_diff,
    video_mean,
)
from c3dfeat.store.summary import file_summary
from c3dfeat.store.writer import FeatureWriter, open_writer, write_matrices

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "RANDOM_INIT_WARNING",
    "STATE_COMPLETE",
    "STATE_INCOMPLETE",
    "STATE_NEEDS_REPAIR",
    "STATUS",
    "LayerInfo",
    "ModelInfo",
    "VideoRecord",
    "ClipTable",
    "ModelResult",
    "FeatureWriter",
    "FeatureFile",
    "open_writer",
    "write_matrices",
    "merge",
    "recover_file",
    "repair",
    "export",
    "provenance_diff",
    "file_summary",
    "video_mean",
]
