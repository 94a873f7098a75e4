"""Fine-tuning (issue #16): a pre-trained backbone against training from scratch, and the frozen-feature cache.

    python -m benchmarks.finetune                    # 3 seeds, 24x24 shapes
    python -m benchmarks.finetune --quick            # 2 seeds, smaller sets, fewer epochs
    python -m benchmarks.finetune --seeds 5 --output out.md

Data: two generated image sets (tasks/data/shapes.py). A: circle, square,
triangle, many images per class. B: diamond, cross, ring and bar (other
classes, one more of them), few training images per class (`B/train/`, the
validation split carved from it) and a separate, larger `B/test/` so that
the accuracies are not decided by a handful of test images.

Cases:
  pre-train     a small ResNet trained on A and saved as a bundle.
  fine-tune     the same ResNet on B from that bundle: `model.init_from`, the
                head re-initialised (3 classes became 4), `model.freeze: backbone`.
  full          the same from the bundle with nothing frozen.
  scratch       the same network, config and epochs on B from random weights.
  Test accuracy on B's test split, per seed (the seed drives B's split, the
  head's init and the batch order) and averaged.

  cache on/off  the fine-tune run with `train.finetune.cache_features` true and
                false: median seconds per epoch (the cached run's first epoch
                includes nothing of the feature pass, which runs before it;
                that pass is reported on its own), the ratio, and each run's
                peak RSS above the start.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks._common import PeakRSS, emit_report, machine_line
from schemas import load_config
from tasks.bundle import write_bundle
from tasks.data import prepare_data
from tasks.data.shapes import make_shapes
from tasks.device import given_device
from tasks.evaluate import evaluate_model
from tasks.recipe import Stages, run_recipe
from tasks.train import train_model

CPU = torch.device("cpu")
NEW_CLASSES = ("diamond", "cross", "ring", "bar")


@dataclass(frozen=True)
class Sizes:
    per_class_a: int = 150
    per_class_b: int = 10
    test_per_class_b: int = 50
    size: int = 24
    pretrain_epochs: int = 12
    epochs: int = 15
    seeds: int = 5
    timing_epochs: int = 6


QUICK = Sizes(per_class_a=40, per_class_b=8, test_per_class_b=10, size=16, pretrain_epochs=3, epochs=4, seeds=2,
              timing_epochs=3)


def _config(root: Path, seed: int, epochs: int, *overrides: str):
    return load_config(None, [
        "name=finetune-bench", "device=cpu", "train.progress=false", "data.source.kind=image_folder",
        f"data.source.path={root}", "data.source.workers=0", "model.kind=resnet", "model.channels=[16, 32]",
        "optimizer.lr=0.01", f"train.epochs={epochs}", "train.batch_size=16", "train.early_stopping.enabled=false",
        f"seed={seed}", *overrides,
    ])


def _run(config, data=None):
    """(test accuracy, TrainResult, seconds of train_model, peak RSS above the start in MiB, parts, data)."""
    data = data if data is not None else prepare_data(config.data, config.seed)
    measured: dict[str, float] = {}

    def train(*args, **kwargs):
        with PeakRSS() as rss:
            started = time.perf_counter()
            result = train_model(*args, **kwargs)
            measured["seconds"] = time.perf_counter() - started
        measured["rss"] = rss.delta_mib
        return result

    run = run_recipe(config, stages=Stages(train_model=train), prepared=(given_device("cpu", config.device), data))
    return run.report.metrics["accuracy"], run.train, measured["seconds"], measured["rss"], run.parts, data


def run_benchmark(sizes: Sizes, folder: Path) -> dict:
    a = make_shapes(folder / "a", per_class=sizes.per_class_a, size=sizes.size, seed=0)
    b = make_shapes(folder / "b" / "train", per_class=sizes.per_class_b, size=sizes.size, seed=1, classes=NEW_CLASSES)
    make_shapes(folder / "b" / "test", per_class=sizes.test_per_class_b, size=sizes.size, seed=2, classes=NEW_CLASSES)
    b = b.parent
    size = f"data.source.size={sizes.size}"
    pre_config = _config(a, 0, sizes.pretrain_epochs, size)
    pre_acc, _, pre_seconds, _, parts, data = _run(pre_config)
    bundle = write_bundle(parts.model, pre_config, data.spec, evaluate_model(parts.model, data, CPU),
                          folder / "pretrained")
    fine, full, scratch = [], [], []
    for seed in range(sizes.seeds):
        fine.append(_run(_config(b, seed, sizes.epochs, size, f"model.init_from={bundle}", "model.freeze=backbone"))[0])
        full.append(_run(_config(b, seed, sizes.epochs, size, f"model.init_from={bundle}"))[0])
        scratch.append(_run(_config(b, seed, sizes.epochs, size))[0])
    timing = {}
    for cache in (True, False):
        config = _config(b, 0, sizes.timing_epochs, size, f"model.init_from={bundle}", "model.freeze=backbone",
                         f"train.finetune.cache_features={str(cache).lower()}")
        _, result, seconds, rss, parts, data = _run(config)
        per_epoch = statistics.median(r.seconds for r in result.history)
        rows = data.spec.n_train + data.spec.n_val
        timing[cache] = {"epoch": per_epoch, "total": seconds, "rss": rss, "cached": result.features_cached,
                         "feature_pass": seconds - sum(r.seconds for r in result.history),
                         "cache_mib": rows * parts.model.head[-1].in_features * 4 / 2**20 if cache else 0.0,
                         "data_mib": (data.X_train.nbytes + data.X_val.nbytes) / 2**20}
    return {"pre_acc": pre_acc, "pre_seconds": pre_seconds, "fine": fine, "full": full, "scratch": scratch,
            "timing": timing, "sizes": sizes, "rows_b": (data.spec.n_train, data.spec.n_val, data.spec.n_test)}


def format_report(result: dict) -> str:
    sizes, timing = result["sizes"], result["timing"]
    on, off = timing[True], timing[False]
    mean = statistics.mean
    lines = [
        "## Fine-tuning (issue #16)",
        "",
        f"- machine: {machine_line()}",
        f"- sets: A = circle/square/triangle, {sizes.per_class_a} per class; B = {'/'.join(NEW_CLASSES)}, "
        f"{sizes.per_class_b} per class to train on (train/val/test rows {'/'.join(map(str, result['rows_b']))}); "
        f"{sizes.size}x{sizes.size} RGB; ResNet channels [16, 32]; Adam lr 0.01, batch 16",
        f"- pre-train on A: {sizes.pretrain_epochs} epochs, {result['pre_seconds']:.1f} s, test accuracy "
        f"{result['pre_acc']:.3f}",
        "",
        "| seed | from the bundle, backbone frozen | from the bundle, nothing frozen | scratch | epochs |",
        "|---:|---:|---:|---:|---:|",
        *(f"| {i} | {f:.3f} | {u:.3f} | {s:.3f} | {sizes.epochs} |"
          for i, (f, u, s) in enumerate(zip(result["fine"], result["full"], result["scratch"]))),
        f"| **mean** | **{mean(result['fine']):.3f}** | **{mean(result['full']):.3f}** | "
        f"**{mean(result['scratch']):.3f}** | |",
        "",
        f"| fine-tune, {sizes.timing_epochs} epochs | median s/epoch | train_model s | peak RSS above start "
        "| cached features |",
        "|---|---:|---:|---:|---:|",
        f"| feature cache on (used: {'yes' if on['cached'] else 'no'}) | {on['epoch']:.4f} | {on['total']:.2f} "
        f"(feature pass and setup {on['feature_pass']:.2f}) | {on['rss']:.1f} MiB | {on['cache_mib']:.3f} MiB "
        f"(images: {on['data_mib']:.2f} MiB) |",
        f"| feature cache off | {off['epoch']:.4f} | {off['total']:.2f} | {off['rss']:.1f} MiB | - |",
        f"| **epoch-time ratio off/on** | **{off['epoch'] / on['epoch']:.1f}x** | "
        f"{off['total'] / on['total']:.1f}x | | |",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.finetune", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sets, fewer epochs and seeds")
    parser.add_argument("--seeds", type=int, help="fine-tune/scratch seeds to average")
    parser.add_argument("--output", type=Path, help="also write the markdown report here")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else Sizes()
    if args.seeds:
        sizes = Sizes(**{**sizes.__dict__, "seeds": args.seeds})
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        report = format_report(run_benchmark(sizes, Path(tmp)))
    emit_report(report, args.output)
    return report


if __name__ == "__main__":
    main()
