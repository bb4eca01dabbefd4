"""The training defaults are the ones docs/training.md's table states (and measured)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from clipsearch import train_defaults as d
from clipsearch.cli import build_parser
from clipsearch.train import TrainConfig

DOCS = Path(__file__).resolve().parents[1] / "docs" / "training.md"


def _docs_row(option: str) -> tuple[str, str]:
    """(from-scratch value, fine-tuning value) of an option in the "Defaults, and why" table."""
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("## Defaults, and why", 1)[1].split("\n## ", 1)[0]
    match = re.search(rf"^\| `{re.escape(option)}` \| (\S+) from scratch, (\S+) fine-tuning \|", section, re.M)
    assert match, f"docs/training.md's defaults table has no row for {option}"
    return match.group(1), match.group(2)


def test_the_docs_table_states_the_defaults_the_code_uses() -> None:
    assert _docs_row("--epochs") == (str(d.SCRATCH_EPOCHS), str(d.FINETUNE_EPOCHS))
    scratch_lr, finetune_lr = _docs_row("--lr")
    assert (float(scratch_lr), float(finetune_lr)) == (d.SCRATCH_LR, d.FINETUNE_LR)
    assert _docs_row("--freeze") == ("none", d.FINETUNE_FREEZE)
    assert _docs_row("--batch-size") == (str(d.SCRATCH_BATCH_SIZE), str(d.FINETUNE_BATCH_SIZE))


@pytest.mark.parametrize("pretrained, fine_tuning", [("none", False), ("bundled", True)])
def test_the_train_command_without_options_gets_those_defaults(pretrained: str, fine_tuning: bool) -> None:
    args = build_parser().parse_args(["train", "pairs.csv", "--out", "run", "--pretrained", pretrained])
    config = TrainConfig(csv=args.csv, out=args.out, pretrained=args.pretrained, epochs=args.epochs, lr=args.lr,
                         freeze=args.freeze, batch_size=args.batch_size)
    expected = ((d.FINETUNE_EPOCHS, d.FINETUNE_LR, d.FINETUNE_FREEZE, d.FINETUNE_BATCH_SIZE) if fine_tuning
                else (d.SCRATCH_EPOCHS, d.SCRATCH_LR, "none", d.SCRATCH_BATCH_SIZE))
    assert (config.num_epochs, config.learning_rate, config.frozen_part, config.batch) == expected
    # An explicit option still wins.
    args = build_parser().parse_args(["train", "pairs.csv", "--out", "run", "--pretrained", pretrained,
                                      "--epochs", "7", "--lr", "2e-4", "--freeze", "text", "--batch-size", "64"])
    config = TrainConfig(csv=args.csv, out=args.out, pretrained=args.pretrained, epochs=args.epochs, lr=args.lr,
                         freeze=args.freeze, batch_size=args.batch_size)
    assert (config.num_epochs, config.learning_rate, config.frozen_part, config.batch) == (7, 2e-4, "text", 64)
