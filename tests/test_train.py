"""Training: a tiny open_clip model learns, checkpoints resume bit-exactly, outputs load back."""
from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from clipsearch import train as train_module
from clipsearch.encoder import load_encoder
from clipsearch.errors import ClipSearchError
from clipsearch.train import TrainConfig, TrainingError, train

TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (240, 220, 30),
           "purple": (140, 40, 170), "orange": (250, 140, 20), "white": (245, 245, 245), "black": (10, 10, 10)}
SHAPES = ("square", "circle", "triangle")


def _draw(colour: str, shape: str, side: str) -> Image.Image:
    img = Image.new("RGB", (32, 32), (128, 128, 128))
    d = ImageDraw.Draw(img)
    x0 = 2 if side == "left" else 17
    box = (x0, 9, x0 + 13, 22)
    fill = COLOURS[colour]
    if shape == "square":
        d.rectangle(box, fill=fill)
    elif shape == "circle":
        d.ellipse(box, fill=fill)
    else:
        d.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=fill)
    return img


def _write_dataset(folder: Path) -> Path:
    """48 captioned pictures: every colour x shape x side."""
    (folder / "images").mkdir(parents=True)
    with (folder / "captions.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["filepath", "title"])
        for colour in COLOURS:
            for shape in SHAPES:
                for side in ("left", "right"):
                    name = f"images/{colour}-{shape}-{side}.png"
                    _draw(colour, shape, side).save(folder / name)
                    w.writerow([name, f"a {colour} {shape} on the {side}"])
    return folder / "captions.csv"


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    # Models this small gain nothing from a second thread, and OpenMP's spin-waiting makes
    # two threads ten times slower on a machine that other jobs keep busy.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("train")
    model = root / "tinyclip.json"
    model.write_text(json.dumps(TINY_CONFIG))
    return {"root": root, "csv": _write_dataset(root / "data"), "model": model}


def _config(data: dict[str, Path], out: Path, **overrides: object) -> TrainConfig:
    values: dict[str, object] = dict(csv=str(data["csv"]), out=str(out), model=str(data["model"]), epochs=12,
                                     batch_size=16, lr=2e-3, warmup=3, seed=0, workers=0, progress=False)
    values.update(overrides)
    return TrainConfig(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def run(data: dict[str, Path]) -> train_module.TrainResult:
    """An uninterrupted 12-epoch run (36 steps), evaluated on its own data every 4 epochs."""
    return train(_config(data, data["root"] / "uninterrupted", val=str(data["csv"]), eval_every=4))


def test_loss_decreases_and_metrics_are_written(run: train_module.TrainResult) -> None:
    lines = [json.loads(line) for line in Path(run.metrics).read_text().splitlines()]
    assert [m["epoch"] for m in lines] == list(range(1, 13))
    assert [m["step"] for m in lines] == list(range(3, 37, 3))
    # From ln(16) = 2.77 (chance) to well below: it learns, it does not just run.
    assert lines[0]["loss"] > 2.7
    assert lines[-1]["loss"] < 0.5 * lines[0]["loss"]
    assert lines[-1]["loss"] == pytest.approx(run.final_loss, abs=1e-4)
    assert [("t2i_R@1" in m) for m in lines] == [False, False, False, True] * 3
    assert {"lr", "t2i_R@1", "i2t_R@10", "t2i_MRR"} <= set(lines[-1])
    assert "analogy_top1" not in lines[-1]  # no toy-world canonicals
    assert run.eval is not None
    assert run.eval["t2i_R@5"] > 0.5 and run.eval["i2t_R@5"] > 0.5  # chance: 5/48
    cfg = json.loads(Path(run.config).read_text())
    assert cfg["model_name"] == "tinyclip" and cfg["total_steps"] == 36 and cfg["image_cache"] is True


def test_final_weights_are_fp16_and_load_with_load_encoder(run: train_module.TrainResult, data: dict[str, Path]) -> None:
    state = load_file(run.weights)
    assert "logit_scale" in state and "visual.conv1.weight" in state
    assert all(t.dtype == torch.float16 for t in state.values() if t.is_floating_point())
    # The JSON config travels with the weights, so the output folder is self-contained.
    config_copy = Path(run.out_dir) / "tinyclip.json"
    assert config_copy.is_file()
    encoder = load_encoder(str(config_copy), run.weights, device="cpu")
    images = [Image.open(data["csv"].parent / "images" / "red-square-left.png").convert("RGB")]
    vectors = np.concatenate([encoder.encode_images(images), encoder.encode_texts(["a red square on the left"])])
    assert vectors.shape == (2, 32)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # The encoder really holds the trained weights.
    trained = state["visual.conv1.weight"].float()
    assert torch.equal(encoder.model.visual.conv1.weight.detach().half().float(), trained)


def test_resume_after_an_interruption_ends_with_the_same_weights(
        run: train_module.TrainResult, data: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    out = data["root"] / "interrupted"
    real_step = train_module._train_step
    calls = {"n": 0}

    def interrupt_mid_epoch_two(*args: object, **kwargs: object) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 5:  # epoch 2, step 2 of 3
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_module, "_train_step", interrupt_mid_epoch_two)
    config = _config(data, out, val=str(data["csv"]), eval_every=4)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert not (out / "final.safetensors").exists()
    monkeypatch.setattr(train_module, "_train_step", real_step)

    with pytest.raises(TrainingError, match="--resume"):
        train(config)
    with pytest.raises(TrainingError, match="lr"):
        train(replace(config, resume=True, lr=1e-3))
    resumed = train(replace(config, resume=True))
    assert resumed.resumed_from_epoch == 1 and resumed.steps == 36
    expected, got = load_file(run.weights), load_file(resumed.weights)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == list(range(1, 13))
    assert metrics == [json.loads(line) | {"seconds": m["seconds"], "images_per_s": m["images_per_s"]}
                       for line, m in zip(Path(run.metrics).read_text().splitlines(), metrics)]


def test_streaming_from_disk_matches_the_cache(data: dict[str, Path]) -> None:
    cached = train(_config(data, data["root"] / "cached", epochs=1))
    streamed = train(_config(data, data["root"] / "streamed", epochs=1, cache_max_gb=0.0))
    assert json.loads(Path(streamed.config).read_text())["image_cache"] is False
    assert streamed.final_loss == pytest.approx(cached.final_loss, abs=1e-3)


def test_bad_csvs_name_the_column_or_file(tmp_path: Path, data: dict[str, Path]) -> None:
    no_title = tmp_path / "no_title.csv"
    no_title.write_text("filepath,caption\nimages/red-square-left.png,hi\n")
    with pytest.raises(ClipSearchError, match="'title'"):
        train(_config(data, tmp_path / "a", csv=str(no_title)))
    missing = data["csv"].parent / "missing.csv"
    missing.write_text("filepath,title\nimages/red-square-left.png,hi\nimages/nowhere.png,there\n")
    with pytest.raises(ClipSearchError, match="nowhere.png"):
        train(_config(data, tmp_path / "b", csv=str(missing)))
    broken = data["csv"].parent / "broken.csv"
    (data["csv"].parent / "images" / "broken.png").write_bytes(b"not a png at all")
    broken.write_text("filepath,title\nimages/red-square-left.png,hi\nimages/broken.png,there\n")
    with pytest.raises(ClipSearchError, match="broken.png"):
        train(_config(data, tmp_path / "c", csv=str(broken)))
    with pytest.raises(ClipSearchError, match="unknown model"):
        train(_config(data, tmp_path / "d", model="no-such-model"))


def test_cli_trains_toyworld_and_the_output_works_with_pretrained(
        data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from clipsearch.cli import main

    out = tmp_path / "tw"
    code = main(["-q", "train", str(data["csv"]), "--model", "toyworld", "--pretrained", "none", "--out", str(out),
                 "--epochs", "1", "--batch-size", "24", "--workers", "0", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["weights"] == str(out / "final.safetensors") and result["steps"] == 2
    code = main(["-q", "eval", str(data["csv"]), "--model", "toyworld", "--pretrained", result["weights"], "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["relevance"] == "exact" and report["images"] == 48 and report["texts"] == 48
    assert report["model"] == f"toyworld/{result['weights']}"
    assert load_encoder("toyworld", result["weights"], device="cpu").dim == 256


@pytest.mark.parametrize("part", ["image", "text"])
def test_freeze_keeps_one_tower_fixed_while_the_other_learns(
        part: str, run: train_module.TrainResult, data: dict[str, Path], tmp_path: Path) -> None:
    # Fine-tune the trained tiny model (a checkpoint file) with one tower frozen.
    result = train(_config(data, tmp_path / part, pretrained=run.weights, epochs=2, freeze=part))
    before, after = load_file(run.weights), load_file(result.weights)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    image_keys = {k for k in before if k.startswith("visual.")}
    text_keys = set(before) - image_keys - {"logit_scale"}
    assert "token_embedding.weight" in text_keys and "visual.conv1.weight" in image_keys
    frozen, trained = (image_keys, text_keys) if part == "image" else (text_keys, image_keys)
    assert not changed & frozen  # not one weight of the frozen tower moved
    assert len(changed & trained) > 0.8 * len(trained)  # the other tower did learn
    cfg = json.loads(Path(result.config).read_text())
    assert cfg["freeze"] == part and cfg["frozen_weights"] > 0 and cfg["trained_weights"] > 0
    # A frozen tower is part of what defines the run: resuming with another refuses.
    other = "text" if part == "image" else "image"
    with pytest.raises(TrainingError, match="freeze"):
        train(_config(data, tmp_path / part, pretrained=run.weights, epochs=2, freeze=other, resume=True))


def test_freeze_rejects_an_unknown_part(data: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="'audio'"):
        _config(data, tmp_path / "x", freeze="audio")
    with pytest.raises(TrainingError, match="'audio'"):
        train_module.freeze_part(torch.nn.Linear(2, 2), "audio")
    with pytest.raises(TrainingError, match="no image-tower parameters"):
        train_module.freeze_part(torch.nn.Linear(2, 2), "image")


def test_a_checkpoint_from_before_freeze_existed_still_resumes(data: dict[str, Path], tmp_path: Path) -> None:
    config = _config(data, tmp_path / "old", epochs=2)
    first = train(replace(config, epochs=1))  # same folder; make its checkpoint look like an old one
    ckpt = torch.load(tmp_path / "old" / "checkpoint.pt", weights_only=True)
    ckpt["config"].pop("freeze")
    ckpt["config"]["epochs"] = 2
    torch.save(ckpt, tmp_path / "old" / "checkpoint.pt")
    resumed = train(replace(config, resume=True))
    assert first.steps == 3 and resumed.resumed_from_epoch == 1 and resumed.steps == 6
