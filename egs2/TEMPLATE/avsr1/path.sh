# Sourced by every recipe: the project's venv, sclite, and small thread counts.
_root=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../../.." && pwd)
if [ -f "${_root}/tools/venv/bin/activate" ]; then
    # shellcheck disable=SC1091
    . "${_root}/tools/venv/bin/activate"
else
    echo "tools/venv is missing: run 'bash tools/install.sh' (or 'make install') in ${_root}" >&2
    exit 1
fi
export PATH="/usr/lib/sctk/bin:${PATH}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONUNBUFFERED=1
export PYTHONWARNINGS=${PYTHONWARNINGS:-ignore::FutureWarning}
