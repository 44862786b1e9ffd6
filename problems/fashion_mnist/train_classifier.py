"""Train the Fashion-MNIST feature classifier and save it with ``save_pretrained``.

    python -m problems.fashion_mnist.train_classifier --epochs 6
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from flexnas.errors import report_errors
from problems.fashion_mnist.classifier import FashionClassifier
from problems.fashion_mnist.data import load_split
from problems.fashion_mnist.model import CLASSIFIER_DIR


def to_input(images_uint8) -> torch.Tensor:
    return torch.as_tensor(images_uint8).float().div(127.5).sub(1.0).unsqueeze(1)


@torch.no_grad()
def accuracy(model: FashionClassifier, images, labels, batch: int = 1000) -> float:
    model.eval()
    x, y = to_input(images), torch.as_tensor(labels).long()
    correct = sum((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum().item() for i in range(0, len(x), batch))
    return correct / len(x)


def train(epochs: int, seed: int, out: Path, threads: int) -> float:
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    images, labels = load_split("train")
    x, y = to_input(images), torch.as_tensor(labels).long()
    model = FashionClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * (len(x) // 128))
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x))
        for i in range(len(x) // 128):
            idx = perm[i * 128:(i + 1) * 128]
            xb = x[idx]
            xb = torch.where(torch.rand(len(xb), 1, 1, 1) < 0.5, xb, xb.flip(3))  # horizontal flips
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {epoch + 1}: loss {loss.item():.3f}", flush=True)
    test_images, test_labels = load_split("test")
    acc = accuracy(model, test_images, test_labels)
    print(f"test accuracy {acc:.4f}")
    model.save_pretrained(out)
    return acc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(CLASSIFIER_DIR))
    args = p.parse_args(argv)
    return report_errors(lambda: train(args.epochs, args.seed, Path(args.out), args.threads) and 0,
                         prog="train_classifier")


if __name__ == "__main__":
    sys.exit(main())
