#!/usr/bin/env bash
# The embedded GRID-style audio-visual corpus (generated here, nothing is downloaded):
# frozen Whisper tiny.en + a trainable pixel lip encoder + frozen SmolLM2-135M with LoRA,
# one model trained on ASR, VSR and AVSR, each decoded and scored (clean and noisy).
# Stage 8 first warms the branches up without the LLM (conf/omni_avsr/multitask_small_warmup.yaml:
# no LLM pass, so a step costs a small fraction of one through it): the lip encoder learns from
# character CTC and audio-guided distillation, and both projectors learn to place their tokens near
# the LLM's embeddings of the spoken words (token CTC). The main run (one epoch) starts from those
# weights (--warmup_init) and trains LoRA and the branches through the LLM.
# Debug size (CI): ./run.sh --train_config conf/debug/multitask_tiny.yaml \
#   --pretrained_models "tiny-random-llama tiny-random-whisper" --local_data_opts "--num_utts 40"
set -euo pipefail

./avsr.sh \
    --train_set train --valid_set dev --test_sets test \
    --train_config conf/omni_avsr/multitask_small.yaml \
    --inference_config conf/decode/greedy.yaml \
    --local_data_opts "--num_utts 1000" \
    --warmup_config conf/omni_avsr/multitask_small_warmup.yaml \
    --warmup_init "audio video losses.ctc_video losses.distill" \
    "$@"
