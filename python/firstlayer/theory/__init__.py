"""The linear-CNN theory of Chowers & Weiss (Theorem 4.2): closed form, fit, and a real simulation.

One module per concern:

* :mod:`~firstlayer.theory.formula`: :func:`linear_profile`, the closed-form energy profile after
  ``t`` gradient steps, ``g_i(t) = lambda_i (1 - (1 - eta lambda_i^2)^t) / (eta lambda_i^2)``;
* :mod:`~firstlayer.theory.fitting`: :func:`fit`, choosing ``eta * t`` to match a network's
  profile (a vectorised log-grid search), and :func:`paper_fit_loop`, the paper's Python loop;
* :mod:`~firstlayer.theory.simulate`: :func:`simulate_linear_cnn`, the theorem's network trained
  in PyTorch on real patches and scored along its trajectory;
* :mod:`~firstlayer.theory.assumption`: :func:`label_patch_correlation`, how far labels correlate
  with the patches' PCA coefficients (the theorem's assumption).

Everything is importable from ``firstlayer.theory`` itself. torch is imported only by
:func:`simulate_linear_cnn`, when called.
"""

from __future__ import annotations

from firstlayer.theory.assumption import LabelCorrelation, label_patch_correlation
from firstlayer.theory.fitting import FitResult, fit, paper_fit_loop
from firstlayer.theory.formula import linear_profile
from firstlayer.theory.simulate import LinearCNNResult, simulate_linear_cnn

__all__ = [
    "FitResult",
    "LabelCorrelation",
    "LinearCNNResult",
    "fit",
    "label_patch_correlation",
    "linear_profile",
    "paper_fit_loop",
    "simulate_linear_cnn",
]
