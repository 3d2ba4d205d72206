"""The extraction pipeline: videos → clips → features → one HDF5 file, streaming and resumable.

    report = c3dfeat.extract(["videos/"], "feats.h5", models=[("c3d", ["fc6", "fc7"]), "r2plus1d_18"])

Modules follow the data (docs/extract.md):

* :mod:`~c3dfeat.pipeline.plan` — ModelRequest → PreparedModel (network, transform, sampling,
  file records, provenance); device and batch-size defaults.
* :mod:`~c3dfeat.pipeline.decode` — one video, decoded once → VideoStart / ClipReady / VideoEnd
  / VideoFailed messages (a generator; no threads).
* :mod:`~c3dfeat.pipeline.batching` — BatchRunner: full zero-padded batches of one model →
  features per clip (pinned buffers, async copies and autocast on CUDA).
* :mod:`~c3dfeat.pipeline.assemble` — per-video feature buffers → store records, in input order.
* :mod:`~c3dfeat.pipeline.scheduler` — LocalScheduler, the in-process engine (decode threads,
  one main thread that batches, runs and commits).
* :mod:`~c3dfeat.pipeline.api` — `extract(...)` itself; `engine="ray"` hands the same arguments
  to c3dfeat.pipeline.ray_engine.
"""
from __future__ import annotations

from c3dfeat.pipeline.api import extract
from c3dfeat.pipeline.plan import RANDOM_INIT_SEED, ModelRequest, PreparedModel, prepare_models
from c3dfeat.pipeline.report import ExtractReport, Progress

__all__ = ["extract", "ExtractReport", "ModelRequest", "Progress", "RANDOM_INIT_SEED", "PreparedModel",
           "prepare_models"]
