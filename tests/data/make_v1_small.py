"""How tests/data/v1_small.h5 and v1_small_f16.h5 were made: run at git b68c848^ (format version 1).

Kept for the record: it imports the version-1 store (`c3dfeat/store.py`), which no longer exists.
Small chunks keep the files ~44 KB each.
"""
import numpy as np

import c3dfeat.store as store
from c3dfeat.store import ClipTable, LayerInfo, ModelInfo, ModelResult, VideoRecord, open_writer

assert store.FORMAT_VERSION == 1
store._TABLE_CHUNK = 16
store._FEATURE_CHUNK_BYTES = 256
MODELS = (
    ModelInfo("c3d", (LayerInfo("fc6", 4, (4,)), LayerInfo("pool5", 2, (2, 1, 1), crops=3)), clip_len=3,
              attrs={"arch": "c3d", "random_init": False, "crops": 3, "crop_reduce": "none"}),
    ModelInfo("r2plus1d", (LayerInfo("avgpool", 3, (3,)),), clip_len=2,
              attrs={"arch": "r2plus1d", "crops": "center"}),
)
PROV = {"decoder": "pyav", "compute_dtype": "fp32"}


def video(i, n, status="ok"):
    vid = ["a/v0.mp4", "b/v1.mp4", "é/vidéo 2.mp4", "broken.mp4"][i]
    ok = status == "ok"
    rec = VideoRecord(id=vid, path="/data/" + vid, label=["run", "jump", "run", ""][i], input_index=i,
                      status=status, error="" if ok else "cannot decode: invalid data",
                      num_frames=10 + i if ok else -1, fps=25.0 if ok else float("nan"),
                      duration=(10 + i) / 25.0 if ok else float("nan"), size_bytes=1000 + i,
                      height=32 if ok else -1, width=48 if ok else -1)
    if not ok:
        return rec, {}
    sf = np.arange(n, dtype=np.int64) * 4
    c = ClipTable(sf, sf / 25.0, np.array([0] * (n - 1) + [1], np.int32), sf[:, None] + np.arange(3))
    fc6 = (100 * i + 10 * np.arange(n)[:, None] + np.arange(4) + 0.25).astype(np.float32)
    pool5 = (100 * i + 10 * np.arange(n)[:, None, None] + np.arange(6).reshape(3, 2) + 0.5).astype(np.float32)
    m = n + 1
    sf2 = np.arange(m, dtype=np.int64) * 2
    c2 = ClipTable(sf2, sf2 / 25.0, np.zeros(m, np.int32), sf2[:, None] + np.arange(2))
    avg = (-100 * i - np.arange(m)[:, None] * np.arange(1, 4)).astype(np.float32)
    return rec, {"c3d": ModelResult(c, {"fc6": fc6, "pool5": pool5}), "r2plus1d": ModelResult(c2, {"avgpool": avg})}


for name, dt in (("v1_small.h5", "float32"), ("v1_small_f16.h5", "float16")):
    with open_writer("tests/data/" + name, MODELS, PROV, dtype=dt, overwrite=True,
                     command_line="c3dfeat extract data -o x.h5", run={"device": "cpu", "batch_size": 4}) as w:
        w.add_video(*video(3, 0, "failed"))
        w.add_video(*video(0, 2))
        w.add_videos([video(1, 3), video(2, 1)])
