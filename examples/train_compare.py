"""Does style augmentation help? Train the same small classifier twice, on the real images
only and on real + stylized, and compare on a held-out test split and on a style-shifted
copy of it (the test images painted in styles the training never saw).

    # 1. the training set: train rows stylized, test rows copied through (a split column)
    augment run data/manifest.csv --styles styles/train --out aug --include-originals --balance --per-image 2
    # 2. the style-shifted test set: only the test rows, in held-out styles
    augment run data/manifest.csv --styles styles/heldout --out shifted --splits test
    # 3. compare
    python examples/train_compare.py aug --shifted shifted --epochs 15

Runs on a CPU at small sizes (64 px by default). The numbers mean something only with
datasets made with the real ImageNet VGG19 weights, not with `--weights random`.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import transforms

from augment.data import ManifestDataset


def small_cnn(classes: int) -> nn.Module:
    """Four conv blocks and a linear head: trains in seconds on a CPU at 64 px."""
    layers: list[nn.Module] = []
    channels = 3
    for width in (16, 32, 64, 128):
        layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2)]
        channels = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes))


def train(data: ManifestDataset, classes: int, *, epochs: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = small_cnn(classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    loader = DataLoader(data, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(seed))
    model.train()
    for _ in range(epochs):
        for images, labels in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(images), labels).backward()
            optimizer.step()
    return model


@torch.no_grad()
def accuracy(model: nn.Module, data: ManifestDataset) -> float | None:
    if len(data) == 0:
        return None
    model.eval()
    right = 0
    for images, labels in DataLoader(data, batch_size=64):
        right += int((model(images).argmax(1) == labels).sum())
    return right / len(data)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="augment output with train (originals + variants) and test rows")
    parser.add_argument("--shifted", type=Path, help="augment output with the test rows in held-out styles")
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--test-split", default="test")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    random.seed(args.seed)

    tf = transforms.Compose([transforms.Resize((args.size, args.size)), transforms.ToTensor()])
    augmented = ManifestDataset(args.data, split=args.train_split, transform=tf)
    real = ManifestDataset(args.data, split=args.train_split, styles=["original"], transform=tf)
    if len(real) == 0:
        raise SystemExit(f"{args.data}: no originals in split {args.train_split!r}; make it with --include-originals")
    tests = {"test (real)": ManifestDataset(args.data, split=args.test_split, styles=["original"], transform=tf)}
    if args.shifted:
        tests["test (style-shifted)"] = ManifestDataset(
            args.shifted, split=args.test_split, exclude_styles=["original"], transform=tf
        )
    classes = len(augmented.classes)

    results: dict[str, Any] = {
        "classes": augmented.classes,
        "test_images": {k: len(v) for k, v in tests.items()},
        "models": {},
    }
    for name, data in (("real only", real), ("real + stylized", augmented)):
        model = train(data, classes, epochs=args.epochs, seed=args.seed)
        results["models"][name] = {"train_images": len(data), **{k: accuracy(model, v) for k, v in tests.items()}}

    header = f"{'trained on':<18}{'images':>8}" + "".join(f"{k:>24}" for k in tests)
    print(header)
    for name, row in results["models"].items():
        cells = "".join(f"{'-' if row[k] is None else format(row[k], '.3f'):>24}" for k in tests)
        print(f"{name:<18}{row['train_images']:>8}{cells}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
