"""``firstlayer reproduce``: the paper's claims re-measured, side by side with its tables.

Eight experiments of Chowers & Weiss (ICML 2023) run at a chosen scale and end in one report:

1. consistency across seeds and first-layer widths (Table 1: 0.99 and 0.98 on CIFAR-10);
2. trained profile against the initialisation's (Table 1: -0.13 +- 0.18);
3. VGG against ResNet (Table 1: 0.87);
4. true against random labels (Table 2: 0.90 +- 0.02) and random-label profiles against init
   (0.03 +- 0.22);
5. the linear-CNN formula fitted to the trained networks (Table 3: 0.94 +- 0.01; random init
   0.1 +- 0.15) and the exact linear CNN simulated against the formula;
6. the theory's assumption: labels against PCA coefficients (Fig. 5: all around 0);
7. the formula fitted to pretrained ImageNet first layers (Table 3: 0.9 +- 0.01);
8. beyond the paper: the same claims in the DFT basis, and the fitted step count along training.

Scales (:data:`SCALES`): ``tiny`` (the bundled CIFAR-10 sample, a minute or two, for tests),
``small`` (2 CPU cores, the exact CIFAR-10 subset, a small CNN plus a VGG-style and a
ResNet-style network at reduced width, under 45 minutes) and ``paper`` (VGG11-bn and ResNet18 on
all of CIFAR-10 for 100 epochs, three seeds; meant for a GPU).

Layout of the output folder::

    plan.json               the scale's settings (a rerun must use the same scale)
    data/train.npz, test.npz   the images the networks were trained on (uint8, NCHW)
    runs/<name>/            training runs (firstlayer.train run directories)
    experiments/eN.json     each experiment's numbers; reused on rerun
    index.html, report.json, profiles.csv, *.png   the comparison report of the trained runs,
                            with the claims table added at the top of index.html
    comparison.html         the same comparison report without the claims (reused on rerun
                            while the runs are unchanged)
    claims.json             list of {id, claim, paper, measured, spread, holds, ...}

Modules: :mod:`~firstlayer.reproduce.scales` (the scales, the experiments and their runs),
:mod:`~firstlayer.reproduce.data` (the images), :mod:`~firstlayer.reproduce.context` (data,
statistics and training runs shared by the experiments), :mod:`~firstlayer.reproduce.experiments`
(the eight experiments), :mod:`~firstlayer.reproduce.claims` (the claims table and verdicts),
:mod:`~firstlayer.reproduce.run` (:func:`reproduce` and the report) and
:mod:`~firstlayer.reproduce.command` (the command line). Importing this package does not import
torch; running the experiments does.
"""

from __future__ import annotations

from firstlayer.reproduce.claims import format_claims
from firstlayer.reproduce.command import add_reproduce_arguments, reproduce_from_args
from firstlayer.reproduce.run import ReproduceResult, reproduce
from firstlayer.reproduce.scales import EXPERIMENTS, SCALES, Scale, plan

__all__ = [
    "EXPERIMENTS",
    "SCALES",
    "ReproduceResult",
    "Scale",
    "add_reproduce_arguments",
    "format_claims",
    "plan",
    "reproduce",
    "reproduce_from_args",
]
