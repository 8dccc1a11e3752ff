"""The binarization engine: exact DAB, its BWN/XNOR and BNN baselines, and how they attach to a model.

    from binarize import dab, binarize_weights
    w_hat, alpha, beta, k = dab(conv.weight)           # exact optimal two-value code per filter
    binarize_weights(model, start=2, end=7, method="dab")  # convs 2..7 train with latent real weights

Imports torch only (no torchvision).
"""

from .functions import SOLVERS, bnn, dab, xnor
from .modules import ACTIVATIONS, BinActive, DABActive, WeightBinarizer
from .attach import (binarize_weights, binarized_layers, conv_layers, layer_stats, mark_projected_,
                     project_latent_, project_pending_, resolve_range)

METHODS = tuple(SOLVERS)

__all__ = ["dab", "xnor", "bnn", "METHODS", "BinActive", "DABActive", "ACTIVATIONS", "WeightBinarizer",
           "binarize_weights", "binarized_layers", "conv_layers", "layer_stats", "mark_projected_", "project_latent_", "project_pending_",
           "resolve_range"]
