"""Train a small Stacked Hourglass on synthetic stick figures (a plain script, no CLI).

    python examples/train_synthetic.py --out runs/synthetic [--model reference] [any shg-fast train option]

The defaults are the first phase of the recipe of the shipped checkpoint
shg_fast/assets/synthetic_small.pt; the second phase resumes with
``--resume runs/synthetic/last.pt --train-size 2000 --epochs 11`` (see shg_fast/assets/README.md).
On a busy CPU set OMP_NUM_THREADS to the free cores (one thread was fastest on a shared 2-core machine).
"""

import argparse
import json

from shg_fast.train import add_arguments, train

SMALL_RECIPE = {"stacks": 2, "features": 64, "res": 64, "batch_size": 8, "train_size": 800,
                "val_size": 128, "epochs": 7, "model": "reference"}


def main() -> None:
    parser = add_arguments(argparse.ArgumentParser(description=__doc__,
                                                   formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.set_defaults(**SMALL_RECIPE, out="runs/synthetic")
    history = train(parser.parse_args())
    if history["val"]:
        final = history["val"][-1]
        print(json.dumps({"step": final["step"], "pckh_all": final["total_all16"],
                          "pckh_14_weighted": final["total_weighted"]}))


if __name__ == "__main__":
    main()
