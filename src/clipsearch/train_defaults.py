"""The training defaults, from scratch and for fine-tuning, without importing torch.

The CLI builds its help text from these at every start, so they live apart from
`clipsearch.train` (which imports torch). The measurements behind each value are in
docs/training.md ("Defaults, and why" and "Fine-tuning on a shifted domain");
tests/test_train_defaults.py checks that the docs and these values agree.
"""
from __future__ import annotations

SCRATCH_LR = 1e-3
SCRATCH_EPOCHS = 30
FINETUNE_LR = 3e-5
FINETUNE_EPOCHS = 3
FINETUNE_FREEZE = "none"
SCRATCH_BATCH_SIZE = 512
FINETUNE_BATCH_SIZE = 128  # the sweep's batch: with 512, 1,000 pairs make 1 step an epoch
FREEZE_PARTS = ("none", "image", "text")
