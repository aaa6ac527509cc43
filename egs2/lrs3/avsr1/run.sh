#!/usr/bin/env bash
# LRS3 (TED talks): train = trainval minus AV-HuBERT's 1,200 validation utterances (433 h;
#   --local_data_opts "--with_pretrain true" adds pretrain/, 1759 h), dev = those 1,200, test = test/ (1,321).
# Corpus root in db.sh (LRS3=...). Stage 2 cuts the 96x96 mouth ROI from the raw face tracks
# (mediapipe face mesh -> mean-face alignment; --video_mode dlib for dlib); stage 3 takes the 16 kHz
# audio out of the mp4s; stage 5 makes two babbles from disjoint halves of the training speakers
# (dump/noise/babble.wav, the training noise; babble_test.wav, the only noise of the noisy test sets)
# and fixed noisy test sets at the papers' SNRs (seed 0, measured SNR in dump/test_snr*/snr.tsv, the
# test babble's speakers in dump/test_snr*/noise_speakers.txt). Clips longer than
# --max_duration (pretrain) are dropped by stage 4, not split, and listed in dump/train/filter_report.txt.
#
# Paper size (GPU; bf16 LLM, AMP, batches by numel, DDP over --ngpu GPUs through ESPnet's options).
# Put the models named in the config under pretrained/ (Whisper medium.en, Llama 3.2-1B, ...).
# CPU, a subset: ./run.sh --ngpu 0 --train_args "" --train_config conf/llama_avsr/avsr_small.yaml
#   (and --local_data_opts to point at a small copy of the corpus).
set -euo pipefail

ngpu=${NGPU:-4}
./avsr.sh \
    --train_set train --valid_set dev --test_sets test \
    --video_mode mediapipe \
    --nj 8 \
    --max_duration 20 \
    --snrs "20 15 10 5 0 -5" \
    --train_config conf/llama_avsr/avsr_paper.yaml \
    --inference_config conf/decode/beam15.yaml \
    --ngpu "${ngpu}" \
    --train_args "--multiprocessing_distributed true" \
    "$@"
