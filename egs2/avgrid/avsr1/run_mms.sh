#!/usr/bin/env bash
# MMS-LLaMA on the embedded corpus (conf/mms_llama/mms_small.yaml): early audio-visual fusion read by
# an AV Q-Former at 3 queries per second of video, scaled by a speech-rate predictor.
# Run after ./run.sh: it reuses that run's data (stages 1-6) and starts the lip encoder from the
# default model's warm-up (exp/multitask_small/warmup). Stage 8 then trains the speech-rate
# predictor (--speech_rate train), warms the fused branch up without the LLM (token CTC on the
# Q-Former's queries, conf/mms_llama/mms_small_warmup.yaml) and trains the whole model through the
# LLM from there; stages 9-11 decode and score as for the default model.
# Without the predictor (rate 1 for every utterance): ./run_mms.sh --speech_rate "" --model_tag mms_small_rate1
set -euo pipefail

warm=exp/multitask_small/warmup/valid.loss.best.pth
[ -e "${warm}" ] || { echo "run_mms.sh: ${warm} is missing: run ./run.sh (at least to stage 8) first" >&2; exit 1; }
lip=""
for k in video.frontend video.encoder losses.ctc_video losses.distill; do lip+=" ${warm}:${k}:${k}"; done

./run.sh --stage 7 --stop_stage 11 \
    --train_config conf/mms_llama/mms_small.yaml \
    --model_tag mms_small \
    --speech_rate train \
    --warmup_config conf/mms_llama/mms_small_warmup.yaml \
    --warmup_args "--init_param${lip}" \
    --warmup_init "fused video.frontend video.encoder losses.ctc_video losses.distill" \
    "$@"
