#!/usr/bin/env bash
# The embedded GRID-style audio-visual corpus (generated here, nothing is downloaded):
# frozen Whisper tiny.en + a trainable pixel lip encoder + frozen SmolLM2-135M with LoRA,
# one model trained on ASR, VSR and AVSR, each decoded and scored (clean and noisy).
# Stage 8 first warms the branches up without the LLM (about 0.35 s a step instead of about 6): the lip
# encoder learns from character CTC and audio-guided distillation, and both projectors learn to place
# their tokens near the LLM's embeddings of the spoken words (token CTC over the LLM tokens of the
# training transcripts: the softmax over all 49k tokens tripled the step).
# The main run (one epoch) starts from those weights and trains LoRA and the branches through the LLM.
# Debug size (CI): ./run.sh --train_config conf/debug/multitask_tiny.yaml \
#   --pretrained_models "tiny-random-llama tiny-random-whisper" --local_data_opts "--num_utts 40"
set -euo pipefail

./avsr.sh \
    --train_set train --valid_set dev --test_sets test \
    --train_config conf/omni_avsr/multitask_small.yaml \
    --inference_config conf/decode/greedy.yaml \
    --local_data_opts "--num_utts 1000" \
    --warmup_args "--model_conf llm_weight=0 --model_conf token_ctc_weights.audio=1.0 --model_conf token_ctc_weights.video=0.5 --model_conf ctc_weights.video=1.0 --model_conf token_ctc_vocab=dump/train/text --max_epoch 18 --optim_conf lr=2.0e-3 --scheduler_conf warmup_steps=300 --best_model_criterion valid,loss,min --keep_nbest_models 1" \
    --warmup_init "audio video ctc distill" \
    "$@"
