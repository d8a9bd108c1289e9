"""LoRA training recipes, in one table: the Train tab's presets, the trainer's defaults and the LoRA proof.

Every number of a recipe is written once, here. The Train tab and the training service read `PRESETS`,
`LoraTrainingConfig` takes its defaults from `TRAINER_DEFAULTS`, and the benchmark's LoRA proof trains
`PRESETS["new shape"]` with the `PROOF_*` settings below (its command-line flags start from them).
Plain data: no torch, no studio.
"""

from __future__ import annotations

PLAIN_LORA = {"lora_layers": "attention", "train_embedding": False, "embedding_learning_rate": 5e-3,
              "subject_weight": 1.0, "lora_dropout": 0.0}
PRESETS: dict[str, dict] = {  # every preset sets every field of PRESET_FIELDS, so switching presets is exact
    "quick": {"rank": 4, "alpha": 4, "learning_rate": 2e-3, "max_steps": 150, "batch_size": 4,
              "lr_scheduler": "constant", "checkpoint_every": 50, "validation_every": 50, **PLAIN_LORA},
    "balanced": {"rank": 8, "alpha": 8, "learning_rate": 1e-3, "max_steps": 400, "batch_size": 4,
                 "lr_scheduler": "cosine", "checkpoint_every": 100, "validation_every": 100, **PLAIN_LORA},
    "quality": {"rank": 16, "alpha": 16, "learning_rate": 5e-4, "max_steps": 1200, "batch_size": 8,
                "lr_scheduler": "cosine", "checkpoint_every": 200, "validation_every": 200, **PLAIN_LORA},
    # the LoRA proof's measured recipe for a shape the base model cannot draw yet (README: the LoRA proof);
    # 1,500 steps: past them the other concepts fade (1,800: 0.771); LoRA dropout 0.1 lifted the star's shape;
    # a fast trigger embedding moves far from its start word quickly, so the other concepts keep their shapes
    "new shape": {"rank": 16, "alpha": 16, "learning_rate": 1e-3, "max_steps": 1500, "batch_size": 8,
                  "lr_scheduler": "cosine", "checkpoint_every": 250, "validation_every": 250,
                  "lora_layers": "convolutions only", "train_embedding": True, "embedding_learning_rate": 4e-2,
                  "subject_weight": 5.0, "lora_dropout": 0.1},
}
PRESET_FIELDS = tuple(PRESETS["quick"])
LORA_LAYERS = {  # a preset's "lora_layers" choice -> the trainer's switches
    "attention": {"train_attention": True, "train_conv": False},
    "attention + convolutions (LoCon)": {"train_attention": True, "train_conv": True},
    "convolutions only": {"train_attention": False, "train_conv": True},
}  # what a preset sets, in the Train tab's order

# a run configured in code (a script, a test) that sets nothing else: a plain attention LoRA of rank 8 at a
# constant rate (the "lora_layers" choice "attention" is the trainer's train_attention=True, train_conv=False)
TRAINER_DEFAULTS: dict = {"rank": 8, "alpha": 8.0, "learning_rate": 1e-3, "max_steps": 300, "batch_size": 4,
                          "lr_scheduler": "constant", "checkpoint_every": 100, "validation_every": 100,
                          **PLAIN_LORA}

# the LoRA proof (`python -m bench`, section "lora"): teach the built-in model the held-out "star" with
# PRESETS["new shape"] and these; the bench's --lora-* flags change them for one run
PROOF_MINUTES = 15.0  # training time cap
PROOF_RESOLUTION = 128  # the built-in model's native size
PROOF_WARMUP_STEPS = 20
PROOF_IMAGES = 30  # training images of stars
PROOF_PHRASINGS = 8  # caption variants per star image (its caption, then the world's varied phrasings)
PROOF_EMBEDDING_INIT = "triangle"  # the word the trigger embedding starts from
PROOF_REGULARIZATION_SHARE = 0.5  # share of each batch drawn from the regularization images
PROOF_PRIOR_IMAGES = 240  # regularization images
PROOF_CLASS_PRIOR = 90  # of PROOF_PRIOR_IMAGES: the star images' own scenes with a circle, square or triangle
PROOF_EVAL_PROMPTS = 48  # star prompts, and prompts of other concepts, scored before and after
