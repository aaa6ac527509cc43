#!/usr/bin/env bash
# Stage 1 of egs2/avgrid/avsr1 (GRID sentences) and egs2/avopen/avsr1 (--text open: open English
# from Debian's fortunes): generate the audio-visual corpus in the LRS3 release layout
# (downloads/avgrid/{trainval,test}/<speaker>/<utt>.{mp4,wav,txt} + valid.id) and turn it into
# Kaldi-style data/{train,dev,test} with the same code the LRS3 recipe uses.
set -euo pipefail

num_utts=1000
num_speakers=40
seed=0
nj=2
corrupt=false        # add a few bad items (corrupt mp4, missing transcript, ...) to test the recipe
text=grid            # sentence source: grid (the GRID grammar) or open (plain English, prep/avgrid/open_text.py)
corpus_dir=downloads/avgrid
_options="num_utts num_speakers seed nj corrupt text corpus_dir"
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../../egs2/TEMPLATE/avsr1/parse_options.sh"

python -m espnet_omni_avsr.bin.generate_avgrid --out_dir "${corpus_dir}" --num_utts "${num_utts}" \
    --num_speakers "${num_speakers}" --seed "${seed}" --nj "${nj}" --text "${text}" $([ "${corrupt}" = true ] && echo --corrupt)
# LRS3 convention: trainval minus the validation ids is train, the validation ids are dev.
python -m espnet_omni_avsr.bin.prepare_lrs_data --root "${corpus_dir}" --out_dir data \
    --split_map "train=trainval-@valid" "dev=@valid" "test=test" --valid_ids "${corpus_dir}/valid.id"
