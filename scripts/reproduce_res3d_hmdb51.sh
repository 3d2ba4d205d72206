#!/usr/bin/env bash
# Reproduce Res3D (3D ResNet-18, Sports-1M) pool5 + linear SVM on HMDB51, and on UCF101 when
# UCF101=1 (papers.md §2: UCF101 85.8 %, HMDB51 54.9 %; both second-hand, from an aggregator
# listing — papers.md found no primary table for them). Mean over the 3 official splits.
# Needs network access (HMDB51 ~2 GB), unrar. Every step is a plain c3dfeat command, the same
# ones the tests run.
#
#   scripts/reproduce_res3d_hmdb51.sh [WORKDIR]      (UCF101=1 also runs UCF101; DEVICE=cuda)
set -euo pipefail
WORK=${1:-reproduce_res3d}
C3DFEAT=${C3DFEAT:-c3dfeat}
DEVICE=${DEVICE:-auto}
PYTHON=${PYTHON:-python3}
mkdir -p "$WORK" && cd "$WORK"

# 1. data: hmdb51_org.rar holds one .rar per class; test_train_splits.rar the split lists
if [ ! -d hmdb51 ]; then
  curl -fL --retry 3 -C - -O http://serre-lab.clps.brown.edu/wp-content/uploads/2013/10/hmdb51_org.rar
  mkdir -p hmdb51_rars hmdb51
  unrar x -idq -o+ hmdb51_org.rar hmdb51_rars/
  for r in hmdb51_rars/*.rar; do unrar x -idq -o+ "$r" hmdb51/; done   # → hmdb51/<class>/<clip>.avi
fi
if [ ! -d testTrainMulti_7030_splits ]; then
  curl -fL --retry 3 -O http://serre-lab.clps.brown.edu/wp-content/uploads/2013/10/test_train_splits.rar
  unrar x -idq -o+ test_train_splits.rar
fi

# 2. weights (Caffe v1.1 checkpoint, converted on load)
"$C3DFEAT" weights download res3d_18.sports1m

# 3. features: Res3D's protocol is the model's default (8 frames, sampling rate 2, 128x171,
#    centre crop 112, mean 128); pool5 = the 512-d global average
"$C3DFEAT" extract hmdb51/ -o res3d_hmdb51.h5 --model res3d_18:pool5 --device "$DEVICE"

# 4. linear SVM on the 3 splits (ids '<class>/<clip>.avi'; the lists name '<clip>.avi')
"$C3DFEAT" linear-eval res3d_hmdb51.h5 --dataset hmdb51 --splits testTrainMulti_7030_splits --json > hmdb51.json

if [ "${UCF101:-0}" = 1 ]; then
  if [ ! -d UCF-101 ]; then
    curl -fL --retry 3 -C - -O https://www.crcv.ucf.edu/data/UCF101/UCF101.rar
    unrar x -idq -o+ UCF101.rar
  fi
  if [ ! -d ucfTrainTestlist ]; then
    curl -fL --retry 3 -O https://www.crcv.ucf.edu/data/UCF101/UCF101TrainTestSplits-RecognitionTask.zip
    unzip -qo UCF101TrainTestSplits-RecognitionTask.zip
  fi
  "$C3DFEAT" extract UCF-101/ -o res3d_ucf101.h5 --model res3d_18:pool5 --device "$DEVICE"
  "$C3DFEAT" linear-eval res3d_ucf101.h5 --dataset ucf101 --splits ucfTrainTestlist --json > ucf101.json
fi

# 5. ours beside the paper's
"$PYTHON" - <<'PY'
import json, os
print(f"{'':30}{'ours':>16}{'paper':>8}")
for name, f, paper in (("Res3D pool5 HMDB51", "hmdb51.json", 54.9), ("Res3D pool5 UCF101", "ucf101.json", 85.8)):
    if os.path.exists(f):
        d = json.load(open(f))
        print(f"{name:30}{d['mean_top1']:>9.1f} ± {d['std_top1']:.1f}{paper:>8.1f}")
PY
