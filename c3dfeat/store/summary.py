"""What `c3dfeat info` shows about a feature file (JSON-able)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Union

import numpy as np

from c3dfeat.store.reader import FeatureFile
from c3dfeat.store.schema import RUN_ATTRS, layer_record


def file_summary(path: Union[str, Path]) -> Dict[str, Any]:
    """Provenance, state, counts, layers, failures of a feature file."""
    with FeatureFile(path) as ff:
        prov = ff.provenance
        failed = ff.failed
        models = {}
        for key in ff.models:
            mi = ff.model_info(key)
            d = dict(mi.attrs)
            d["clips"] = ff.num_clips(key)
            d["layers"] = [layer_record(layer) for layer in mi.layers]
            models[key] = d
        return {
            "path": str(path),
            "format_version": ff.format_version,
            "c3dfeat_version": prov.get("c3dfeat_version", ""),
            "storage_dtype": ff.storage_dtype,
            "state": ff.state,
            "state_reason": ff.state_reason,
            "videos": ff.num_videos,
            "ok": ff.num_videos - len(failed),
            "failed": len(failed),
            "failures": failed,
            "random_init": ff.random_init,
            "warning": ff.warning,
            "models": models,
            "provenance": {k: v for k, v in prov.items() if k not in RUN_ATTRS},
            "command_line": prov.get("command_line", ""),
            "created_utc": prov.get("created_utc", ""),
            "shard": prov.get("shard", ""),
            "run": json.loads(prov.get("run") or "{}"),
            # every run that wrote it, with how many of its videos each wrote
            "runs": [dict(entry, videos=int(count)) for entry, count in
                     zip(ff.runs, np.bincount(ff.run_index, minlength=len(ff.runs)))],
        }
