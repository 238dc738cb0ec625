"""What every example shares: the --backend/--quick/--out flags and saving figures as PNG files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures go to PNG files, no window ever opens

import matplotlib.pyplot as plt  # noqa: E402

# Run from a checkout without installing: the nnx package next to examples/ comes first.
ROOT = Path(__file__).resolve().parent.parent
if (ROOT / "nnx" / "__init__.py").exists() and str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import nnx  # noqa: E402

BACKENDS = ["numpy", "cupy", "torch", "jax", "array_api_strict"]
# Figures go to an ignored folder, so running an example never dirties the checkout. The gallery
# in examples/figures (shown by the READMEs) is regenerated on purpose: --out examples/figures.
OUT = Path(__file__).resolve().parent / "out"
GALLERY = Path(__file__).resolve().parent / "figures"


def parse_args(description: str, add_arguments=None) -> argparse.Namespace:
    """Parse the flags every example takes; `add_arguments(parser)` may add its own first."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="numpy",
                        help=f"array library to run on: {' | '.join(BACKENDS)} (default numpy)")
    parser.add_argument("--quick", action="store_true", help="a short run that finishes in seconds")
    parser.add_argument("--out", type=Path, default=OUT,
                        help="folder for the PNG figures (default examples/out, ignored by git; "
                             "--out examples/figures regenerates the committed gallery)")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args()
    try:
        nnx.get_backend(args.backend)
    except (ValueError, nnx.BackendUnavailableError) as exc:
        parser.error(str(exc))
    return args


def save_figure(fig, args: argparse.Namespace, name: str) -> None:
    """Write `fig` to OUT/name as a small PNG and close it."""
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / name
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
    print(f"figure: {path}")
