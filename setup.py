"""lamflow package metadata.

Ranges live here; the exact, tested pins live in requirements/*.txt. The top-level folders are
mapped into the ``lamflow`` namespace so nothing lands in site-packages as a bare ``datasets`` or
``train`` module (which would shadow HuggingFace ``datasets`` and friends).
"""
from setuptools import setup

PACKAGE_FOLDERS = {
    "lamflow": "lamflow",
    "lamflow.commands": "lamflow/commands",
    "lamflow.demo": "lamflow/demo",
    "lamflow.pipelines": "pipelines",
    "lamflow.lam": "lam",
    "lamflow.datasets": "datasets",
    "lamflow.train": "train",
    "lamflow.train.tasks": "train/tasks",
}

setup(
    name="lamflow",
    version="0.1.0",
    description="Video/audio token extraction into WebDataset shards and Learnable-Attention-Mask transformers",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=list(PACKAGE_FOLDERS),
    package_dir=PACKAGE_FOLDERS,
    package_data={"lamflow.train": ["configs/*.yaml"], "lamflow.pipelines": ["model_configs/*.json"]},
    install_requires=[
        "torch>=2.9,<2.15",
        "torchvision>=0.24,<0.30",
        "torchaudio>=2.9,<2.12",
        "open_clip_torch>=3.0,<4",
        "timm>=1.0,<2",
        "webdataset>=1.0,<2",
        "dask[distributed]>=2025.1",
        "h5py>=3.10",
        "ffmpeg-python>=0.2,<0.3",
        "numpy>=1.26",
        "pillow>=10",
        "pyyaml>=6",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "pycocoevalcap>=1.2,<2",
    ],
    extras_require={
        "cluster": ["dask-jobqueue>=0.8"],
        "bertscore": ["bert-score>=0.3.13,<0.4", "transformers>=4.40,<6"],
        "test": ["pytest>=8"],
    },
    entry_points={"console_scripts": ["lamflow=lamflow.cli:main"]},
)
