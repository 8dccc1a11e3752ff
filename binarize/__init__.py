"""The binarization engine: exact DAB, its baselines, SD-BNN's parts, and how they attach to a model.

    from binarize import dab, binarize_weights, binarize_layer, binarize_inputs
    w_hat, alpha, beta, k = dab(conv.weight)                   # exact optimal two-value code per filter
    binarize_weights(model, start=2, end=7, method="dab")      # convs 2..7 train with latent real weights
    binarize_weights(model, layers={2: "dab", 3: "xnor"})      # a method per conv
    binarize_layer(model.fc, "dab", backward="ede", shift="wsd")  # any Conv2d or Linear, with options
    binarize_inputs(model, "asd")                              # the activation binarizer of every binary input
    binarize_inputs(torchvision_resnet18, "sign", [2, 3])      # any model: inserted in front of convs 2 and 3
    binarize_inputs(model, "asd", backward="approxsign")       # SD-BNN's ImageNet rule: ASD shift, ApproxSign

A binarizer is one registered object (weights.py, activations.py): its forward, its backward rule
(surrogates.py), its learnable parameters, its per-filter statistics and its stored form. A new method is
one class plus one ``@register_weight_binarizer`` / ``@register_activation_binarizer``.

Imports torch only (no torchvision).
"""

from .functions import binary_sign, bnn, dab, xnor
from .surrogates import EDE, STE, SURROGATES, ApproxSignWindow, Surrogate, ede_schedule, make_surrogate
from .weights import (BNN, DAB, WEIGHT_BINARIZERS, WEIGHT_SHIFTS, XNOR, FilterStats, Sign, WeightBinarizer,
                      WeightShift, make_weight_binarizer, register_weight_binarizer)
from .activations import (ACTIVATIONS, ASD, ActivationBinarizer, ApproxSign, BinActive, DABActive, activation_class,
                          make_activation, register_activation_binarizer)
from .attach import (INPUT_SLOT, binarize_inputs, binarize_layer, binarize_weights, binarized_layers, conv_layers,
                     filter_stats, format_indices, input_binarizers, insert_input_binarizer, layer_stats, parse_indices,
                     project_latent_, resolve_layers, resolve_range, set_ede, set_input_binarizer, weight_binarizer)


def weight_methods():
    """The registered weight binarizer names (``--binarizer``), sorted."""
    return sorted(WEIGHT_BINARIZERS)


def activation_methods():
    """The registered activation binarizer names (``--binActivation``), sorted."""
    return sorted(ACTIVATIONS)


__all__ = ["dab", "xnor", "bnn", "binary_sign",
           "Surrogate", "STE", "EDE", "ApproxSignWindow", "SURROGATES", "make_surrogate", "ede_schedule",
           "WeightBinarizer", "DAB", "XNOR", "BNN", "Sign", "WeightShift", "FilterStats", "WEIGHT_BINARIZERS",
           "WEIGHT_SHIFTS", "register_weight_binarizer", "make_weight_binarizer", "weight_methods",
           "ActivationBinarizer", "BinActive", "ApproxSign", "ASD", "DABActive", "ACTIVATIONS",
           "register_activation_binarizer", "activation_class", "make_activation", "activation_methods",
           "conv_layers", "parse_indices", "format_indices", "resolve_range", "resolve_layers", "weight_binarizer",
           "binarized_layers", "binarize_layer", "binarize_weights", "project_latent_", "layer_stats", "filter_stats",
           "input_binarizers", "binarize_inputs", "set_input_binarizer",
           "insert_input_binarizer", "INPUT_SLOT", "set_ede"]
