"""Class-prompt files shipped with nnunet-cps4 (installed as the package nnunet_cps4.text_prompts)."""
