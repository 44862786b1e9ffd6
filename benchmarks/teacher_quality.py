"""Teacher quality of the embedded model: FID to real images, class histogram, classifier accuracy.

    python -m benchmarks.teacher_quality [--samples 2000] [--quick]

FID is computed by torch-fidelity's statistics functions in the classifier's feature space between
teacher samples (DDIM 100) and the same number of Fashion-MNIST test images. The teacher's features
come from the feature store, so ``benchmarks.compare`` (which scores the same teacher images on the
same problem) samples nothing again; the class histogram reads the classifier's head on them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import machine, parse, save_json, write_section
from flexnas.errors import report_errors
from flexnas.metrics.evaluator import Evaluator
from flexnas.metrics.features import to_uint8_rgb
from flexnas.metrics.measures import fid, statistics
from flexnas.models.registry import get_problem
from flexnas.report.plots import save_grid

GRID = Path(__file__).resolve().parents[1] / "docs" / "teacher_grid.png"


def run(samples: int, hist_samples: int, report: Path, results: Path, grid: Path | None,
        compile: bool = False) -> dict:
    from problems.fashion_mnist import load_classifier
    from problems.fashion_mnist.data import CLASSES, load_split
    from problems.fashion_mnist.features import NAME
    from problems.fashion_mnist.train_classifier import accuracy

    ev = Evaluator(get_problem("fashion-mnist", compile=compile), images=samples)
    store, teacher = ev.store(), ev.loaded.problem.teacher_plan()
    f_gen = store.features(teacher, samples)
    sample_s = store.cost(teacher, samples)["sample_s"]
    test_images, test_labels = load_split("test")
    real = torch.from_numpy(test_images[:samples]).float().div(255).unsqueeze(1)
    t0 = time.time()
    from torch_fidelity.utils import create_feature_extractor

    extractor = create_feature_extractor(NAME, ["features"], cuda=False, verbose=False).eval()
    with torch.no_grad():
        f_real = extractor(to_uint8_rgb(real))[0].double().numpy()
    fid_value = fid(statistics(f_gen), statistics(f_real))
    fid_s = time.time() - t0
    clf = load_classifier()
    with torch.no_grad():
        pred = clf.head(torch.from_numpy(f_gen[:hist_samples]).float()).argmax(1).numpy()
    hist = np.bincount(pred, minlength=10) / len(pred)
    acc = accuracy(clf, test_images, test_labels)
    if grid is not None:
        save_grid(ev.loaded.images(None, n=64), grid, nrow=8)
    res = {"samples": samples, "fid_to_test": fid_value, "hist_samples": hist_samples,
           "class_histogram": dict(zip(CLASSES, hist.round(4).tolist())),
           "all_classes_present": bool((hist > 0).all()), "max_class_share": float(hist.max()),
           "classifier_test_accuracy": acc, "sampling_s": sample_s, "fid_s": fid_s, "machine": machine()}
    save_json("teacher_quality", res, results)
    rows = "\n".join(f"| {c} | {share:.1%} |" for c, share in res["class_histogram"].items())
    ok = "met" if res["all_classes_present"] and res["max_class_share"] <= 0.25 else "NOT met"
    write_section("teacher", f"""
## Teacher quality (embedded Fashion-MNIST DDPM, DDIM 100)

Command: `python -m benchmarks.teacher_quality` · machine: {res['machine']}

| measure | value |
|---|---|
| FID to real (classifier features, {samples} samples vs {samples} test images) | {fid_value:.3f} |
| classifier accuracy on the 10,000 test images | {acc:.2%} |
| sampling time for {samples} images (when they entered the feature store{', compiled step kinds' if compile else ''}) | {sample_s:.0f} s |

Class histogram of {hist_samples} teacher samples by the classifier (target: every class present,
none above 25%: {ok}; largest share {res['max_class_share']:.1%}):

| class | share |
|---|---|
{rows}

![teacher samples](../docs/teacher_grid.png)
""", report)
    return res


def main(argv: list[str] | None = None) -> int:
    def options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--samples", type=int, default=2000)
        p.add_argument("--hist-samples", type=int, default=1000)
        p.add_argument("--quick", action="store_true", help="100 samples (for a smoke test)")
        p.add_argument("--no-grid", action="store_true")
        p.add_argument("--compile", action="store_true",
                       help="sample with the compiled step kinds (benchmarks.run does, to share compare's images)")

    args = parse(__doc__, argv, options)
    samples = 100 if args.quick else args.samples
    hist = min(args.hist_samples, samples)

    def go() -> int:
        res = run(samples, hist, Path(args.report), Path(args.results), None if args.no_grid else GRID,
                  args.compile)
        print(f"FID to test {res['fid_to_test']:.3f}; max class share {res['max_class_share']:.1%}; "
              f"classifier accuracy {res['classifier_test_accuracy']:.2%}")
        return 0

    return report_errors(go, prog="teacher_quality")


if __name__ == "__main__":
    sys.exit(main())
