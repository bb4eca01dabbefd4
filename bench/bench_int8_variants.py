"""Which int8: dynamic vs static (calibrated) quantisation of the ONNX image tower, and torch bf16.

    python bench/bench_int8_variants.py --photos /tmp/tw/images --model toyworld --pretrained bundled
    python bench/bench_int8_variants.py --photos /tmp/tw/images --model ViT-B-32 --pretrained none --rounds 5

`--photos`: a folder of JPEGs (e.g. `clipsearch toyworld generate --n 200 /tmp/tw`): the
first 64 calibrate the static variant, the next 64 are encoded by every variant to compare
vectors with fp32. Variants, timed on one batch of 32, interleaved round by round:

* fp32: the fp32 ONNX export clipsearch makes (`use_onnxruntime`);
* dyn: `quantize_dynamic` (int8 weights, activations quantised at run time): what
  `--image-backend onnx-int8` runs (`clipsearch.encoder.quantize_int8`);
* static: `quantize_static`, QDQ, per-channel int8 weights, uint8 activations calibrated
  (MinMax) on the 64 calibration photos, MatMul/Conv/Gemm;
* torch-fp32 and torch-bf16 (`torch.autocast("cpu", torch.bfloat16)`, oneDNN's bf16 on
  CPUs with avx512_bf16 / AMX).

Prints one-off costs, the cosine of each variant's vectors to fp32's (min, mean), photos/s
per round and the median ratio to fp32 onnxruntime.
"""
from __future__ import annotations

import argparse
import glob
import os
import statistics
import sys
import tempfile
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", required=True)
    ap.add_argument("--model", default="toyworld")
    ap.add_argument("--pretrained", default="bundled")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_dynamic, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process
    from PIL import Image

    from clipsearch.encoder import load_encoder

    work = tempfile.mkdtemp(prefix="clipsearch-int8-variants-")
    enc = load_encoder(args.model, None if args.pretrained == "none" else args.pretrained, image_backend="torch")
    fp32_path = enc.use_onnxruntime(work)
    print(f"{args.model}: fp32 export {os.path.getsize(fp32_path) / 1e6:.0f} MB; load average {os.getloadavg()[0]:.1f}")
    prep = os.path.join(work, "prep.onnx")
    t = time.perf_counter()
    quant_pre_process(str(fp32_path), prep, skip_symbolic_shape=True)
    print(f"quant_pre_process {time.perf_counter() - t:.1f} s")
    files = sorted(glob.glob(os.path.join(args.photos, "*.jpg")))
    if len(files) < 128:
        sys.exit(f"need 128 JPEGs in {args.photos}, found {len(files)}")

    def batch(paths: list[str]) -> np.ndarray:
        return torch.stack([enc.preprocess(Image.open(p).convert("RGB")) for p in paths]).numpy()

    calib, test = batch(files[:64]), batch(files[64:128])
    dyn = os.path.join(work, "dyn.onnx")
    t = time.perf_counter()
    quantize_dynamic(prep, dyn, weight_type=QuantType.QInt8)
    print(f"dynamic: {time.perf_counter() - t:.1f} s, {os.path.getsize(dyn) / 1e6:.0f} MB")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"pixels": calib[i:i + 8]} for i in range(0, len(calib), 8)])

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    static = os.path.join(work, "static.onnx")
    t = time.perf_counter()
    quantize_static(prep, static, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=["MatMul", "Conv", "Gemm"])
    print(f"static: {time.perf_counter() - t:.1f} s, {os.path.getsize(static) / 1e6:.0f} MB")

    sessions = {name: ort.InferenceSession(path, providers=["CPUExecutionProvider"])
                for name, path in (("fp32", str(fp32_path)), ("dyn", dyn), ("static", static))}

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    ref = unit(sessions["fp32"].run(None, {"pixels": test})[0])
    for name, session in sessions.items():
        c = (unit(session.run(None, {"pixels": test})[0]) * ref).sum(1)
        print(f"{name:10s} cosine to fp32: min {c.min():.5f} mean {c.mean():.5f}")
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        c = (unit(enc.model.encode_image(torch.from_numpy(test)).float().numpy()) * ref).sum(1)
    print(f"torch-bf16 cosine to fp32: min {c.min():.5f} mean {c.mean():.5f}")

    x = test[:32]
    times: dict[str, list[float]] = {k: [] for k in [*sessions, "torch-fp32", "torch-bf16"]}
    for r in range(args.rounds):
        for name, session in sessions.items():
            t = time.perf_counter()
            session.run(None, {"pixels": x})
            times[name].append(time.perf_counter() - t)
        with torch.inference_mode():
            t = time.perf_counter()
            enc.model.encode_image(torch.from_numpy(x))
            times["torch-fp32"].append(time.perf_counter() - t)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                t = time.perf_counter()
                enc.model.encode_image(torch.from_numpy(x))
                times["torch-bf16"].append(time.perf_counter() - t)
        print(f"round {r + 1}: " + ", ".join(f"{k} {len(x) / v[-1]:.1f}" for k, v in times.items())
              + f" photos/s; load {os.getloadavg()[0]:.1f}", flush=True)
    ratio = {k: statistics.median(f / v for f, v in zip(times["fp32"], times[k])) for k in times}
    print("median ratio to fp32 onnxruntime (per round): " + ", ".join(f"{k} {r:.2f}x" for k, r in ratio.items()))


if __name__ == "__main__":
    main()
