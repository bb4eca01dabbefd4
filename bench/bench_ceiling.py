"""This machine's matrix-product ceiling, fp32 and int8, and what it means for ViT-B-32 per image.

    python bench/bench_ceiling.py                # ~1 min
    python bench/bench_ceiling.py --reps 30

ViT-B-32's image tower is matrix products (99.9% of its multiply-adds, counted below from
its shape), so the fastest matrix product the CPU runs bounds the photos per second any
runtime can reach. Measured here with onnxruntime's own kernels on one thread, on the
shapes of ViT-B-32's MLP for a batch of 16 images (800 tokens x 768 -> 3,072), in CPU
seconds (`time.process_time`), then times the cores:

* fp32 `MatMul` (MLAS, AVX-512 FMA);
* int8 `MatMulInteger` (uint8 activations x int8 weights, AVX-512 VNNI `vpdpbusd`), the
  product the int8 image tower runs; its activations are quantised on the fly
  (`DynamicQuantizeLinear`), timed separately.

Each is the best of `--reps` runs. CPU time on one thread, not wall time on all cores,
because on a shared, loaded machine a multi-threaded product waits for its slowest
descheduled thread; CPU time counts only the time the kernel ran (caches and a sibling
hyper-thread can still slow it, so these are lower bounds of the true ceilings). It prints
the ceilings in G(FL)OP/s per core and for all cores, and the photos per second they allow
for ViT-B-32.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np


def vit_b32_macs(image: int = 224, patch: int = 32, width: int = 768, layers: int = 12, mlp: int = 3072,
                 embed: int = 512) -> dict[str, float]:
    """Multiply-adds of open_clip's ViT-B-32 image tower per image, by kind."""
    tokens = (image // patch) ** 2 + 1
    per_layer_matmul = tokens * width * (3 * width) + tokens * width * width + 2 * tokens * width * mlp
    attention = 2 * tokens * tokens * width
    return {"patch embedding": (image // patch) ** 2 * 3 * patch * patch * width,
            "linear layers": layers * per_layer_matmul, "attention scores": layers * attention,
            "projection": width * embed}


def _session(graph: "object") -> "object":
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(graph.SerializeToString(), options,  # type: ignore[attr-defined]
                                        providers=["CPUExecutionProvider"])


def _graph(op: str, m: int, k: int, n: int) -> "object":
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if op == "MatMul":
        w = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "w")
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])
        inits = [w]
    elif op == "MatMulInteger":
        w = numpy_helper.from_array(rng.integers(-127, 128, (k, n)).astype(np.int8), "w")
        node = helper.make_node("MatMulInteger", ["x", "w"], ["y"])
        x = helper.make_tensor_value_info("x", TensorProto.UINT8, [m, k])
        y = helper.make_tensor_value_info("y", TensorProto.INT32, [m, n])
        inits = [w]
    else:  # DynamicQuantizeLinear: the int8 tower's per-product activation quantisation
        node = helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "scale", "zero"])
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])
        y = helper.make_tensor_value_info("y", TensorProto.UINT8, [m, k])
        inits = []
        outs = [y, helper.make_tensor_value_info("scale", TensorProto.FLOAT, []),
                helper.make_tensor_value_info("zero", TensorProto.UINT8, [])]
        return helper.make_model(helper.make_graph([node], "g", [x], outs, inits),
                                 opset_imports=[helper.make_opsetid("", 17)])
    return helper.make_model(helper.make_graph([node], "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)])


def best_seconds(op: str, m: int, k: int, n: int, reps: int) -> float:
    session = _session(_graph(op, m, k, n))
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (m, k)).astype(np.uint8) if op == "MatMulInteger" else \
        rng.standard_normal((m, k)).astype(np.float32)
    session.run(None, {"x": x})  # type: ignore[attr-defined]
    best = float("inf")
    for _ in range(reps):
        started = time.process_time()
        session.run(None, {"x": x})  # type: ignore[attr-defined]
        best = min(best, time.process_time() - started)
    return best / (os.cpu_count() or 1)  # as if every core ran its share


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    flags = set()
    model = "unknown CPU"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
    print(f"{model}, {os.cpu_count()} cores; {', '.join(sorted(flags & {'avx512f', 'avx512_vnni', 'avx512_bf16', 'amx_int8'}))}"
          f"; load average {os.getloadavg()[0]:.1f}")
    macs = vit_b32_macs()
    total = sum(macs.values())
    print(f"ViT-B-32 image tower: {total / 1e9:.2f} G multiply-adds per image = {2 * total / 1e9:.2f} GFLOP "
          + ", ".join(f"{k} {v / total:.1%}" for k, v in macs.items()))
    m, k, n = 16 * 50, 768, 3072
    fp32 = best_seconds("MatMul", m, k, n, args.reps)
    int8 = best_seconds("MatMulInteger", m, k, n, args.reps)
    quant = best_seconds("DynamicQuantizeLinear", m, k, n, args.reps)
    flops = 2 * m * k * n
    cores = os.cpu_count() or 1
    print(f"all {cores} cores (one core's CPU-time rate x {cores}):")
    print(f"fp32 MatMul {m}x{k}x{n}: {flops / fp32 / 1e9:7.1f} GFLOP/s (best of {args.reps})")
    print(f"int8 MatMulInteger:        {flops / int8 / 1e9:7.1f} GOP/s   ({fp32 / int8:.2f}x fp32)")
    print(f"  with the activations' DynamicQuantizeLinear: {flops / (int8 + quant) / 1e9:7.1f} GOP/s "
          f"({fp32 / (int8 + quant):.2f}x fp32)")
    per_image = 2 * total
    print(f"ViT-B-32 photos/s at these ceilings: fp32 {flops / fp32 / per_image:.1f}, int8 {flops / int8 / per_image:.1f}, "
          f"int8 with quantisation {flops / (int8 + quant) / per_image:.1f}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
