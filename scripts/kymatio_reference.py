#!/usr/bin/env python3
"""Reference scattering coefficients from kymatio's NumPy frontend, for dp-data's test
`crates/dp-data/tests/scattering.rs`.

Run from the repository root (CI never runs it; the test reads the stored file):

    python3 -m venv /tmp/kyenv && /tmp/kyenv/bin/pip install kymatio==0.3.0 numpy scipy
    /tmp/kyenv/bin/python scripts/kymatio_reference.py

It reads the first digits of the bundled MNIST file (`crates/dp-data/data/mnist_5k.csv.gz`,
784 pixels then the label per line, pixels scaled by 1/255 as dp-data does) and writes
`crates/dp-data/tests/data/kymatio_scattering.json`: for each case the input image, the
settings (J, L) and kymatio's `Scattering2D(J, shape, L, max_order=2)` output, shape
`[K, M/2^J, N/2^J]` with K = 1 + J·L + L²·J(J−1)/2 (81 for J = 2, L = 8), in kymatio's channel
order (order 0, then order 1 by (j1, θ1), then order 2 by (j1, θ1, j2, θ2)).

Cases: three full 28×28 digits with the paper's J = 2, L = 8 (Tramèr & Boneh 2021), and a
24×16 crop of a fourth digit with J = 3, L = 4 (non-square, another J and L: catches
transposed axes and filters built only for the default settings). The inputs are float64 so
that the reference's own rounding is kymatio's float32 filters only.
"""

import gzip
import json
import os

import numpy as np
import kymatio
# kymatio.numpy also imports the 3-D frontend, which needs scipy.special.sph_harm (gone in
# scipy ≥ 1.15): import the 2-D NumPy frontend directly.
from kymatio.scattering2d.frontend.numpy_frontend import ScatteringNumPy2D as Scattering2D

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "crates", "dp-data", "data", "mnist_5k.csv.gz")
DST = os.path.join(ROOT, "crates", "dp-data", "tests", "data", "kymatio_scattering.json")


def digits(count):
    out = []
    with gzip.open(SRC, "rt") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            v = [int(x) for x in line.split(",")]
            out.append((np.array(v[:784], dtype=np.float64).reshape(28, 28) / 255.0, v[784]))
            if len(out) == count:
                break
    return out


def case(name, image, label, J, L):
    s = Scattering2D(J=J, shape=image.shape, L=L, max_order=2)
    out = s(image)
    return {
        "name": name,
        "label": label,
        "J": J,
        "L": L,
        "height": image.shape[0],
        "width": image.shape[1],
        "image": [float(x) for x in image.ravel()],
        "shape": list(out.shape),
        "coefficients": [float("%.9g" % x) for x in out.ravel()],
    }


def main():
    d = digits(4)
    cases = [case(f"digit{i}", img, lab, 2, 8) for i, (img, lab) in enumerate(d[:3])]
    img, lab = d[3]
    cases.append(case("digit3_crop24x16_J3_L4", img[2:26, 6:22].copy(), lab, 3, 4))
    doc = {
        "generator": "scripts/kymatio_reference.py",
        "kymatio_version": kymatio.__version__,
        "numpy_version": np.__version__,
        "cases": cases,
    }
    with open(DST, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
    print(f"wrote {DST}: " + ", ".join(f"{c['name']} {c['shape']}" for c in cases))


if __name__ == "__main__":
    main()
