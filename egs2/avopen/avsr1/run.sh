#!/usr/bin/env bash
# The embedded audio-visual corpus on open English: the same generator, voices and mouth renderer
# as egs2/avgrid/avsr1, with plain English sentences from Debian's fortunes instead of the GRID
# grammar (local/data.sh --text open; espnet_omni_avsr/prep/avgrid/open_text.py). Test and dev
# speakers say sentences that no training speaker says. The same twelve stages and model family.
set -euo pipefail

./avsr.sh \
    --train_set train --valid_set dev --test_sets test \
    --train_config conf/open/multitask_open.yaml \
    --inference_config conf/decode/greedy.yaml \
    --local_data_opts "--text open --num_utts 1500" \
    --warmup_config conf/open/multitask_open_warmup.yaml --snrs "0 -5" \
    --warmup_init "audio video losses.ctc_video losses.distill" \
    "$@"
