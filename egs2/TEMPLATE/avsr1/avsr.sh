#!/usr/bin/env bash
# The shared stage script of the audio-visual LLM recipes (egs2/<corpus>/avsr1/run.sh calls it).
# Each stage is a Python entry point; each can be re-run and skips work that is already complete.
#
#  1 data preparation (local/data.sh: Kaldi-style data/<set>/)   7 collect stats (shape files)
#  2 video preprocessing (mouth ROI) -> dump/<set>/video.scp        8 training
#  3 audio formatting (16 kHz) and audio/video length checks        9 model selection (averaged / best)
#  4 length/quality filtering, with a report of what was dropped    10 decoding: test set x task x rate (x SNR)
#  5 noise: babble from training speech, noisy test sets            11 scoring (sclite) -> RESULTS.md
#  6 pretrained models and tokenizer                               12 pack the model into one archive
# Filtering comes before noise so that the noisy test sets hold exactly the kept utterances.
set -euo pipefail

stage=1; stop_stage=12
nj=2                      # parallel jobs for data preparation
ngpu=0
train_config=             # training YAML (required)
inference_config=         # decoding YAML (conf/decode/*.yaml)
train_set=train; valid_set=dev; test_sets="test"
snrs="10 5 0 -5"          # noisy copies of the test sets (clean is always decoded; "": clean only)
noise_dir=                # stage 5: a folder of noise wavs (MUSAN-style, searched recursively) for the noisy test sets instead of the test babble
decode_tasks=             # default: the tasks in the training config
local_data_opts=          # passed to local/data.sh
video_mode=precropped     # stage 2: precropped (mouth ROI given) or a face-landmark mode
video_prep_conf=          # stage 2: YAML options of the mode (preprocess_video --mode_conf), e.g. "{roi_format: npy}":
                          #   the kept videos stored as decoded frames, which the loader reads without decoding
min_duration=0.3; max_duration=20; max_words=60
pretrained_dir=pretrained
pretrained_models="smollm2-135m whisper-tiny.en"
dumpdir=dump; expdir=exp
model_tag=                # default: the training config's file name
inference_tag=            # default: the decoding config's file name
train_args=               # extra avsr_train options
warmup_config=            # stage 8: when set, a warm-up run goes first (exp/<tag>/warmup): this YAML stacked on
                          #   train_config (its losses, epochs, learning rate), e.g. a lip-encoder warm-up
                          #   without the LLM: conf/omni_avsr/multitask_small_warmup.yaml
warmup_args=              # extra avsr_train options of the warm-up run (also starts one without warmup_config)
warmup_init=video         # module prefixes the main run loads from the warm-up's best model (--init_param);
                          #   src=dst loads src into another module, e.g. audio.projectors.4=audio.projectors.16
warmup_from=              # stage 8: take the warm-up from this finished run dir (e.g. exp/<other tag>/warmup)
                          #   instead of training one: models that vary only what the warm-up does not train
speech_rate=              # stage 8, early-fused models (conf/mms_llama): "train" trains MMS-LLaMA's speech-rate
                          #   predictor on the training set first (exp/<tag>/speech_rate/rate.pth, with its dev
                          #   error in rate.json) and gives it to the warm-up and main runs; a file path uses that predictor
inference_args=           # extra avsr_inference options
_options="stage stop_stage nj ngpu train_config inference_config train_set valid_set test_sets snrs noise_dir decode_tasks
local_data_opts video_mode video_prep_conf min_duration max_duration max_words pretrained_dir pretrained_models dumpdir expdir
model_tag inference_tag train_args warmup_config warmup_args warmup_init warmup_from speech_rate inference_args"
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/parse_options.sh"
. ./path.sh

[ -n "${train_config}" ] || { echo "$0: --train_config is required" >&2; exit 1; }
[ -n "${model_tag}" ] || model_tag=$(basename "${train_config}" .yaml)
[ -n "${inference_tag}" ] || inference_tag=$(basename "${inference_config:-default}" .yaml)
exp="${expdir}/${model_tag}"
logdir="${expdir}/logs"; mkdir -p "${logdir}"
all_sets="${train_set} ${valid_set} ${test_sets}"
if [ -z "${decode_tasks}" ]; then
    decode_tasks=$(python -c "import sys; from espnet_omni_avsr.utils.config_stack import load_config; print(' '.join(load_config(sys.argv[1])['model_conf']['tasks']))" "${train_config}")
fi

# run_stage N "what" command...: logs to expdir/logs/stageN.log (the data stages 1-6) or
# expdir/<model_tag>/logs/stageN.log (the model's stages 7-12, so that two models can be trained
# side by side in one recipe directory); a failure names the command and log.
run_stage() {
    local n=$1 what=$2; shift 2
    if [ "${stage}" -le "${n}" ] && [ "${stop_stage}" -ge "${n}" ]; then
        local dir="${logdir}" start=${SECONDS} rc log
        [ "${n}" -lt 7 ] || dir="${exp}/logs"
        mkdir -p "${dir}"; log="${dir}/stage${n}.log"
        echo "=== stage ${n}: ${what} (log: ${log})" >&2
        set +e
        ( set -e; "$@" ) 2>&1 | tee "${log}" | { grep --line-buffered -vE "nltk_data|Flash Attention" || true; } >&2
        rc=${PIPESTATUS[0]}
        set -e
        if [ "${rc}" -ne 0 ]; then
            echo "ERROR: stage ${n} (${what}) failed with exit code ${rc}: $*" >&2
            echo "       see ${log}" >&2
            exit 1
        fi
        echo "=== stage ${n} done in $((SECONDS - start)) s" >&2
        echo "stage${n} $((SECONDS - start))" >> "${dir}/stage_times"
    fi
}

# Names of files, data, sets and directories come from espnet_omni_avsr/names.py.
names() { python -m espnet_omni_avsr.names "$@"; }
data_args() { names data-args --prefix "$1" --dir "$2"; }  # data_args <prefix> <dir>: every input of a set

stage1() { local/data.sh ${local_data_opts}; }
stage2() { for s in ${all_sets}; do
    python -m espnet_omni_avsr.bin.preprocess_video --data_dir "data/${s}" --out_dir "${dumpdir}/${s}" \
        --mode "${video_mode}" --mode_conf "${video_prep_conf:-{\}}" --nj "${nj}"; done; }
stage3() { for s in ${all_sets}; do
    python -m espnet_omni_avsr.bin.format_audio --data_dir "data/${s}" --out_dir "${dumpdir}/${s}" --nj "${nj}"; done; }
stage4() {
    for s in ${train_set} ${valid_set}; do
        python -m espnet_omni_avsr.bin.filter_data --data_dir "data/${s}" --dump_dir "${dumpdir}/${s}" \
            --min_duration "${min_duration}" --max_duration "${max_duration}" --max_words "${max_words}"; done
    for s in ${test_sets}; do  # test sets: only unusable items are dropped, never by length
        python -m espnet_omni_avsr.bin.filter_data --data_dir "data/${s}" --dump_dir "${dumpdir}/${s}"; done; }
stage5() {  # babble.wav (training noise) and babble_test.wav (noisy sets) from disjoint speaker halves
    local args=(--train_dir "${dumpdir}/${train_set}" --noise_out "${dumpdir}/noise") s
    [ -z "${noise_dir}" ] || args+=(--noise_dir "${noise_dir}")  # your noise for the noisy sets
    if [ -n "${test_sets}" ]; then
        args+=(--src)
        for s in ${test_sets}; do args+=("${dumpdir}/${s}"); done
        # an empty ${snrs} passes a bare --snrs: the training babble only, no noisy test sets
        # shellcheck disable=SC2086
        args+=(--snrs ${snrs})
    fi
    python -m espnet_omni_avsr.bin.make_noisy_sets "${args[@]}"; }
stage6() { python -m espnet_omni_avsr.bin.prepare_pretrained --output_dir "${pretrained_dir}" --models ${pretrained_models}; }
stage7() {
    local scp; scp=$(names modality audio scp)
    # shellcheck disable=SC2046
    python -m espnet_omni_avsr.bin.avsr_train --config "${train_config}" --collect_stats true --ngpu 0 \
        --batch_type unsorted --output_dir "${exp}/stats" --use_tensorboard false \
        $(data_args train "${dumpdir}/${train_set}") $(data_args valid "${dumpdir}/${valid_set}") \
        --train_shape_file "${dumpdir}/${train_set}/${scp}" --valid_shape_file "${dumpdir}/${valid_set}/${scp}"; }
speech_rate_predictor() {  # -> the predictor file for --speech_rate (trained once, then reused)
    local out="${exp}/speech_rate/rate.pth" whisper
    if [ "${speech_rate}" != train ]; then echo "${speech_rate}"; return 0; fi
    if [ ! -e "${out}" ]; then
        whisper=$(python -c 'import sys; from espnet_omni_avsr.utils.config_stack import load_config
print((load_config(sys.argv[1]).get("audio_encoder_conf") or {}).get("model_dir") or "")' "${train_config}")
        [ -n "${whisper}" ] || { echo "--speech_rate train: ${train_config} has no audio_encoder_conf.model_dir" >&2; return 1; }
        mkdir -p "${exp}/speech_rate"
        python -m espnet_omni_avsr.bin.train_speech_rate --train_dir "${dumpdir}/${train_set}" \
            --valid_dir "${dumpdir}/${valid_set}" --whisper_dir "${whisper}" --output "${out}" \
            > "${exp}/speech_rate/train.log" 2>&1 || { cat "${exp}/speech_rate/train.log" >&2; return 1; }
        tail -n 3 "${exp}/speech_rate/train.log" >&2
    fi
    echo "${out}"; }
# Stages 7 and 8: avsr_train does nothing when its output dir holds a finished run of the same
# options and inputs (its avsr_train.done); a killed training resumes from its last checkpoint. The
# training logs are appended to, so that a resumed run's log follows the interrupted one's.
stage8() {
    local init=() best k s shape warm="${exp}/warmup" rate=()
    shape="$(names modality audio data_name)_shape"
    for s in train valid; do
        [ -f "${exp}/stats/${s}/${shape}" ] || {
            echo "stage 8: ${exp}/stats/${s}/${shape} is missing: run stage 7 (collect stats) for model tag" \
                "${model_tag} first (e.g. --stage 7)" >&2
            return 1; }
    done
    mkdir -p "${exp}"
    if [ -n "${speech_rate}" ]; then
        rate=(--speech_rate_predictor "$(speech_rate_predictor)") || return 1
        [ -n "${rate[1]}" ] || return 1
    fi
    if [ -n "${warmup_from}" ]; then
        warm="${warmup_from}"
        [ -e "${warm}/valid.loss.best.pth" ] || [ -e "${warm}/latest.pth" ] || {
            echo "--warmup_from ${warm}: no valid.loss.best.pth or latest.pth there (is that warm-up finished?)" >&2
            return 1; }
    elif [ -n "${warmup_config}" ] || [ -n "${warmup_args}" ]; then
        mkdir -p "${warm}"
        # shellcheck disable=SC2046,SC2086
        python -m espnet_omni_avsr.bin.avsr_train --config "${train_config}" ${warmup_config:+--config "${warmup_config}"} \
            --ngpu "${ngpu}" --resume true \
            --output_dir "${warm}" $(data_args train "${dumpdir}/${train_set}") $(data_args valid "${dumpdir}/${valid_set}") \
            --train_shape_file "${exp}/stats/train/${shape}" --valid_shape_file "${exp}/stats/valid/${shape}" \
            ${rate[@]+"${rate[@]}"} ${train_args} ${warmup_args} 2>&1 | tee -a "${warm}/train.log"
    else
        warm=
    fi
    if [ -n "${warm}" ]; then
        best="${warm}/valid.loss.best.pth"; [ -e "${best}" ] || best="${warm}/latest.pth"
        for k in ${warmup_init}; do init+=("${best}:${k%%=*}:${k#*=}"); done
        echo "main run starts from the warm-up's ${warmup_init} weights in ${best}"
    fi
    # shellcheck disable=SC2046,SC2086
    python -m espnet_omni_avsr.bin.avsr_train --config "${train_config}" --ngpu "${ngpu}" --resume true \
        --output_dir "${exp}" $(data_args train "${dumpdir}/${train_set}") $(data_args valid "${dumpdir}/${valid_set}") \
        --train_shape_file "${exp}/stats/train/${shape}" --valid_shape_file "${exp}/stats/valid/${shape}" \
        ${init[@]+--init_param "${init[@]}"} ${rate[@]+"${rate[@]}"} ${train_args} 2>&1 | tee -a "${exp}/train.log"; }
stage9() {
    local m
    for m in valid.acc.ave.pth valid.acc.best.pth valid.loss.best.pth latest.pth; do
        # an average older than the last epoch is from a shorter run (training stopped, then
        # resumed for more epochs and stopped before ESPnet averaged again): not what was trained
        if [ "${m}" = valid.acc.ave.pth ] && [ -e "${exp}/${m}" ] && [ -e "${exp}/latest.pth" ] \
            && [ "$(readlink -f "${exp}/${m}")" -ot "$(readlink -f "${exp}/latest.pth")" ]; then
            echo "skipping ${m}: older than the last epoch (latest.pth)"; continue
        fi
        if [ -e "${exp}/${m}" ]; then
            ln -sfn "$(readlink -f "${exp}/${m}")" "${exp}/model.pth"
            echo "selected ${m} -> ${exp}/model.pth"; return 0
        fi
    done
    echo "no trained model in ${exp}" >&2; return 1; }
stage10() {  # one process decodes every test set x task x trained rate x SNR (the model loads once)
    local jobs="${exp}/decode_${inference_tag}/jobs.tsv"
    mkdir -p "$(dirname "${jobs}")"
    # clean and noisy sets for the tasks that read audio (noise touches audio only), clean for the rest
    names decode-jobs --config "${exp}/config.yaml" --tasks="${decode_tasks}" --test_sets="${test_sets}" \
        --snrs="${snrs}" --dump_dir "${dumpdir}" --exp_dir "${exp}" --inference_tag "${inference_tag}" > "${jobs}"
    # shellcheck disable=SC2086
    python -m espnet_omni_avsr.bin.avsr_inference ${inference_config:+--config "${inference_config}"} \
        --train_config "${exp}/config.yaml" --model_file "${exp}/model.pth" --ngpu "${ngpu}" \
        --jobs "${jobs}" ${inference_args}; }
stage11() {
    local d ref
    names decode-dirs --exp_dir "${exp}" --inference_tag "${inference_tag}" --dump_dir "${dumpdir}" |
    while IFS=$'\t' read -r d ref; do
        python -m espnet_omni_avsr.bin.score --ref "${ref}/text" --hyp "${d}/text" --out_dir "${d}/score_wer"
    done
    python -m espnet_omni_avsr.bin.make_results --exp_dir "${expdir}" --dump_dir "${dumpdir}" --out RESULTS.md; }
stage12() { python -m espnet_omni_avsr.bin.pack_model --config "${exp}/config.yaml" --model_file "${exp}/model.pth" \
    --out "${exp}/packed/${model_tag}.tar" --base_dir .; }

run_stage 1 "data preparation" stage1
run_stage 2 "video preprocessing (${video_mode})" stage2
run_stage 3 "audio formatting and audio/video length checks" stage3
run_stage 4 "length/quality filtering" stage4
run_stage 5 "noise preparation and noisy test sets" stage5
run_stage 6 "pretrained models" stage6
run_stage 7 "collect stats" stage7
run_stage 8 "training" stage8
run_stage 9 "model selection" stage9
run_stage 10 "decoding" stage10
run_stage 11 "scoring" stage11
run_stage 12 "packing" stage12
echo "done: stages ${stage}..${stop_stage}" >&2
