#!/usr/bin/env bash
# Stage 1 of egs2/lrs3/avsr1: the LRS3 release -> Kaldi-style data/{train,dev,test}.
#
#   <LRS3>/pretrain|trainval|test/<speaker>/<utt>.mp4 + <utt>.txt ("Text:  <TRANSCRIPT>")
#
# Sets (the LLM-AVSR papers' setup):
#   train = trainval minus the validation list (433 h); --with_pretrain true adds pretrain/ (1759 h)
#   dev   = the 1,200 trainval utterances of AV-HuBERT's lrs3-valid.id
#   test  = test/ (1,321 utterances)
# The validation list is not downloaded at run time. Get it from the AV-HuBERT repository
# (facebookresearch/av_hubert, avhubert/preparation/data/lrs3-valid.id; research licence, also
# vendored by the Llama-AVSR and MMS-LLaMA repositories) and put it at LRS3_VALID_IDS (db.sh,
# default <LRS3>/lrs3-valid.id). Without it, --draw_valid true writes a list of 1,200 trainval
# utterances drawn with --seed: a reproducible split, but NOT the papers' one.
# Long pretrain clips are not split: stage 4 drops clips longer than --max_duration (run.sh) and
# lists them in dump/train/filter_report.txt.
set -euo pipefail
. ./db.sh

lrs3_root="${LRS3:-}"
valid_ids="${LRS3_VALID_IDS:-}"
with_pretrain=false
draw_valid=false
num_valid=1200
seed=0
_options="lrs3_root valid_ids with_pretrain draw_valid num_valid seed"
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../../egs2/TEMPLATE/avsr1/parse_options.sh"

if [ -z "${lrs3_root}" ]; then
    echo "$0: the LRS3 root is not set: set LRS3 in db.sh (or the environment), or pass --lrs3_root DIR" >&2
    exit 1
fi
[ -n "${valid_ids}" ] || valid_ids="${lrs3_root}/lrs3-valid.id"
if [ ! -f "${valid_ids}" ] && [ "${draw_valid}" != true ]; then
    echo "$0: validation list ${valid_ids} does not exist. Copy AV-HuBERT's lrs3-valid.id there (see the" >&2
    echo "    head of $0), set LRS3_VALID_IDS in db.sh, or pass --draw_valid true (not the papers' list)." >&2
    exit 1
fi
train="trainval-@valid"
[ "${with_pretrain}" = true ] && train="pretrain+trainval-@valid"
# shellcheck disable=SC2046
python -m espnet_omni_avsr.bin.prepare_lrs_data --root "${lrs3_root}" --out_dir data \
    --split_map "train=${train}" "dev=@valid" "test=test" --valid_ids "${valid_ids}" \
    $([ "${draw_valid}" = true ] && echo --draw_valid trainval "${num_valid}" "${seed}")
