#!/usr/bin/env bash
# Stage 1 of egs2/lrs2/avsr1: the LRS2 release (mvlrs_v1) -> Kaldi-style data/{train,dev,test}.
#
#   <LRS2>/main/<folder>/<utt>.mp4 + <utt>.txt, <LRS2>/pretrain/<folder>/<utt>.*,
#   <LRS2>/train.txt, val.txt, test.txt (lines "<folder>/<utt>", test.txt with a " NF"/" MV" tag),
#   pretrain.txt
#
# Sets, by the official file lists: train = main/ items of train.txt (+ pretrain/ with
# --with_pretrain true), dev = main/ items of val.txt, test = main/ items of test.txt (1,243).
# Long pretrain clips are not split: stage 4 drops clips longer than --max_duration (run.sh) and
# lists them in dump/train/filter_report.txt.
set -euo pipefail
. ./db.sh

lrs2_root="${LRS2:-}"
with_pretrain=false
_options="lrs2_root with_pretrain"
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../../egs2/TEMPLATE/avsr1/parse_options.sh"

if [ -z "${lrs2_root}" ]; then
    echo "$0: the LRS2 root is not set: set LRS2 in db.sh (or the environment), or pass --lrs2_root DIR" >&2
    exit 1
fi
train="main&@train"
[ "${with_pretrain}" = true ] && train="main&@train+pretrain"   # left to right: (main & @train) + pretrain
python -m espnet_omni_avsr.bin.prepare_lrs_data --root "${lrs2_root}" --out_dir data \
    --split_map "train=${train}" "dev=main&@val" "test=main&@test"
