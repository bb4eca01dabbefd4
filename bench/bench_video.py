"""Videos: indexing cost against real time, memory on big and long videos, and moment recall.

    python bench/bench_video.py                    # all three, with the bundled model
    python bench/bench_video.py --vit              # also the cost with ViT-B-32 (random weights: same FLOPs)
    python bench/bench_video.py --clips 40         # moment recall over 40 toy-world clips

Cost: a 60 s 1080p H.264 clip (libx264, 30 fps) is written twice, with a phone-like GOP
(a keyframe every second) and with x264's default long GOP (250 frames), and indexed at the
default sampling (keyframes plus a frame every 2 s): decode (sampling) and encode seconds,
and the real-time factor (video seconds per indexing second). Beside it, in the same run,
a full decode of the same file: what decoding every frame would cost.

Memory: peak RSS of sampling a 4K clip and of a 10-minute clip (small frames), in fresh
processes, against the process's RSS before.

Moment recall: toy-world clips whose scenes change at known times (clipsearch.toyworld_video),
indexed in a library with photos beside them; for each segment's caption the top hit must be
its video, with the returned segment overlapping the true one.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def write_clip(path: Path, width: int, height: int, seconds: float, fps: int = 30, keyint: int | None = 30,
               preset: str = "ultrafast") -> Path:
    """Moving shapes over a gradient, a new 'shot' every 7 s (libx264; ultrafast: no scene-cut keyframes)."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": preset, "crf": "26", **({"g": str(keyint)} if keyint else {})}
        yy, xx = np.mgrid[0:height, 0:width]
        base = ((xx * 255) // width).astype(np.uint8)
        for i in range(int(seconds * fps)):
            shot = i // (fps * 7)
            img = np.empty((height, width, 3), np.uint8)
            img[..., 0] = (base.astype(np.int32) + shot * 40) % 256
            img[..., 1] = ((yy * 255) // height).astype(np.uint8)
            img[..., 2] = (shot * 70) % 256
            s = height // 4
            x = (i * 9) % (width - s)
            img[height // 3:height // 3 + s, x:x + s] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def full_decode(path: Path) -> tuple[int, float]:
    import av

    started = time.perf_counter()
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        n = sum(1 for _ in c.decode(s))
    return n, time.perf_counter() - started


def cost(path: Path, encoder, label: str, duration: float) -> None:
    from clipsearch.images import to_pixels
    from clipsearch.video import sample_frames

    frames_all, full = full_decode(path)
    started = time.perf_counter()
    info, frames = sample_frames(path, target_size=getattr(encoder, "image_size", 224))
    decode = time.perf_counter() - started
    spec = getattr(encoder, "pixel_spec", None)
    # Warm: the model is loaded (and exported) once per process, not per video.
    if spec is not None:
        encoder.encode_pixels(np.stack([to_pixels(f.image, spec) for f in frames[:2]]))
    else:
        encoder.encode_images([f.image for f in frames[:2]])
    started = time.perf_counter()
    info, frames = sample_frames(path, target_size=getattr(encoder, "image_size", 224))
    decode = time.perf_counter() - started
    spec = getattr(encoder, "pixel_spec", None)
    started = time.perf_counter()
    if spec is not None:
        encoder.encode_pixels(np.stack([to_pixels(f.image, spec) for f in frames]))
    else:
        encoder.encode_images([f.image for f in frames])
    encode = time.perf_counter() - started
    total = decode + encode
    print(f"  {label:<34} {info.keyframes:>4} keyframes  {len(frames):>3} frames  sample {decode:5.2f} s "
          f"(full decode of {frames_all} frames {full:5.2f} s, {full / decode:4.1f}x)  encode {encode:5.2f} s  "
          f"=> {duration / total:5.1f}x real time")


def peak_rss(path: Path, target: int) -> str:
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork and exec, so a child would report its parent's.
    code = ("import re;from clipsearch.video import sample_frames;"
            "hwm=lambda: int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))/1024;"
            "import av;b=hwm();"
            f"i,f=sample_frames({str(path)!r}, target_size={target});"
            "print(f'{len(f)} frames of {i.width}x{i.height}, {i.duration:.0f} s: peak RSS {hwm():.0f} MB "
            "({hwm()-b:.0f} MB over the interpreter with PyAV loaded)')")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def moment_recall(n: int, work: Path) -> None:
    from clipsearch import Library, toyworld
    from clipsearch.toyworld_video import generate_videos, read_segments

    folder = work / "moments"
    csv_path = generate_videos(folder, n, seed=11)
    toyworld.generate(folder / "photos", 200, split="seen", seed=12, size=128, workers=1, progress=False)
    rows = read_segments(csv_path)
    started = time.perf_counter()
    with Library.open(work / "moments-lib") as lib:
        report = lib.index(folder)
        indexed = time.perf_counter() - started
        hits_ok = right_video = 0
        for row in rows:
            hit = lib.search(row["title"], k=1)[0]
            video = str(folder / row["filepath"])
            truth = [r for r in rows if r["filepath"] == row["filepath"] and r["canonical"] == row["canonical"]]
            if hit.path == video:
                right_video += 1
                a, b = hit.segment
                hits_ok += any(a < float(r["end"]) and b > float(r["start"]) for r in truth)
    print(f"  {n} clips ({len(rows)} segments) beside 200 photos, indexed in {indexed:.1f} s ({report.added} files)")
    print(f"  top hit is the right video: {right_video / len(rows):.3f}; and its segment overlaps the true one "
          f"(moment recall): {hits_ok / len(rows):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=30, help="toy-world clips for moment recall")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the 1080p clip")
    parser.add_argument("--vit", action="store_true", help="also time ViT-B-32 (random weights)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["cost", "memory", "recall"])
    args = parser.parse_args()
    from common import machine  # noqa: E402  (bench/common.py)

    print(machine(), f"| load average {os.getloadavg()[0]:.1f}")
    from clipsearch.encoder import load_encoder

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "cost" not in args.skip:
            print(f"Cost of indexing a {args.seconds:.0f} s 1080p H.264 clip (30 fps):")
            clips = {"phone-like GOP (keyframe every 1 s)": write_clip(work / "phone.mp4", 1920, 1080, args.seconds),
                     "x264 default GOP (250 frames)": write_clip(work / "long.mp4", 1920, 1080, args.seconds,
                                                                 keyint=None)}
            models = [("toyworld (bundled)", load_encoder())]
            if args.vit:
                models.append(("ViT-B-32", load_encoder("ViT-B-32", None)))
            for name, encoder in models:
                print(f" {name}:")
                for label, path in clips.items():
                    cost(path, encoder, label, args.seconds)
        if "memory" not in args.skip:
            print("Memory (fresh process each):")
            big = write_clip(work / "4k.mp4", 3840, 2160, 20, keyint=60, preset="ultrafast")
            print("  4K, 20 s:", peak_rss(big, 224))
            long = write_clip(work / "long10.mp4", 160, 90, 600, fps=30, keyint=300, preset="ultrafast")
            print("  10 minutes:", peak_rss(long, 224))
        if "recall" not in args.skip:
            print("Moment recall with the bundled model:")
            moment_recall(args.clips, work)
    print(f"load average now: {os.getloadavg()[0]:.1f}; peak RSS of this run {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
