"""Write src/caffenorm/data/example.caffemodel, the weights of the bundled example net.

Weights come from the prototxt's fillers with a fixed seed; the BatchNorm blobs are then filled
the way Caffe fills them, by a few training steps on fixed random batches, so that the stored
statistics (and their scale factor) are not trivial.  Run from the repository root:

    python scripts/make_example_model.py
"""

from __future__ import annotations

from pathlib import Path

import torch

import caffenorm

DATA = Path(__file__).resolve().parents[1] / "src" / "caffenorm" / "data"


def main() -> None:
    proto = DATA / "example.prototxt"
    net = caffenorm.load(proto, phase="train", seed=2024)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for _ in range(5):
            net(torch.randn(8, 3, 32, 32, generator=generator) * 50 + 100)
    net.eval()
    net.save(DATA / "example.saved.prototxt", DATA / "example.caffemodel")
    (DATA / "example.saved.prototxt").unlink()  # the hand-written prototxt (with comments) stays
    print(f"wrote {DATA / 'example.caffemodel'}")


if __name__ == "__main__":
    main()
