"""Which float layers between packed convs fold into bit operations, and the per-channel thresholds
they fold into.

A packed conv reads only the signs of its input. When the float layers in front of that sign are
monotone per channel (BN in eval mode, ReLU, Hardtanh, Identity, Dropout in eval mode) with at most one
max-pool among them, the sign bit of a channel is a threshold test on the tensor the chain starts from:

    sign(BN(maxpool(ReLU(v)))) >= 0   <=>   OR over the pool window of [v >= T[c]], flipped where needed

so the chain folds away. Starting from the sign's ``z >= 0`` and walking back, an affine ``a u + c``
moves the threshold to ``(t - c) / a`` and flips the comparison where ``a < 0`` (``a = 0`` makes it a
constant), a clamp to [lo, hi] makes it constant outside its range, and a max-pool turns ``max >= t``
into an OR of per-pixel tests and ``max <= t`` into NOT(OR of ``> t``). The last test is written for the
kernels as ``v >= T`` xor a flip, with T the float32 that makes the float32 test equal the real one
(``v > t`` is ``v >= the next float32 above t``). The arithmetic is exact in the real numbers; the dense
model rounds its BN in float32, so the two agree except where a value lies within rounding of a
threshold.

:func:`find_folds` traces one forward of a model (module hooks for its leaf layers and a
TorchFunctionMode for the functions its containers call, such as residual additions) to learn which
tensor each layer reads and how many readers each tensor has: only a tensor with a single reader folds,
so a block input that also feeds a residual addition stays float. It returns the plan that
``deploy.packed.fold_model`` applies.
"""

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["Predicate", "Chain", "AffineFold", "Dataflow", "find_folds"]

GE, GT, LE, LT, TRUE, FALSE = range(6)
_FLIP = np.array([LE, LT, GE, GT, TRUE, FALSE])  # the comparison seen through a negative scale
_CONSTANT = (TRUE, FALSE)


def _compare(value, op, t):
    """[value op t] per channel, for op in GE, GT, LE, LT."""
    return np.select([op == GE, op == GT, op == LE, op == LT], [value >= t, value > t, value <= t, value < t])


def _ceil32(t):
    """The smallest float32 >= t (t float64)."""
    f = t.astype(np.float32)
    return np.where(f.astype(np.float64) < t, np.nextafter(f, np.float32(np.inf)), f)


def _above32(t):
    """The smallest float32 > t."""
    f = t.astype(np.float32)
    return np.where(f.astype(np.float64) <= t, np.nextafter(f, np.float32(np.inf)), f)


class Predicate:
    """Per channel, a bit ``[z op t]`` (op: GE, GT, LE, LT, or the constants TRUE, FALSE), moved back
    through the layers in front of ``z``. Starts as a sign's ``z >= 0``."""

    def __init__(self, channels):
        self.op = np.full(channels, GE, np.int64)
        self.t = np.zeros(channels, np.float64)
        self.post_invert = None  # set by a max-pool: the pooled bit is flipped where True

    def through_affine(self, scale, shift):
        """z = scale * u + shift per channel."""
        scale, shift = np.asarray(scale, np.float64), np.asarray(shift, np.float64)
        live = ~np.isin(self.op, _CONSTANT)
        zero = live & (scale == 0)
        held = _compare(shift, self.op, self.t)
        safe = np.where(scale == 0, 1.0, scale)
        self.t = np.where(live & ~zero, (self.t - shift) / safe, self.t)
        self.op = np.where(live & (scale < 0), _FLIP[self.op], self.op)
        self.op = np.where(zero, np.where(held, TRUE, FALSE), self.op)
        return self

    def through_clamp(self, low, high):
        """z = min(max(u, low), high): ReLU is clamp(0, inf), Hardtanh clamp(min_val, max_val)."""
        op, t = self.op, self.t
        true = (((op == GE) & (t <= low)) | ((op == GT) & (t < low)) | ((op == LE) & (t >= high))
                | ((op == LT) & (t > high)))
        false = (((op == GE) & (t > high)) | ((op == GT) & (t >= high)) | ((op == LE) & (t < low))
                 | ((op == LT) & (t <= low)))
        self.op = np.where(true, TRUE, np.where(false, FALSE, op))
        return self

    def through_maxpool(self):
        """z = the max over a window: z >= t is an OR of u >= t; z <= t is NOT(OR of u > t)."""
        if self.post_invert is not None:
            raise ValueError("a chain holds at most one max-pool")
        self.post_invert = np.isin(self.op, (LE, LT))
        self.op = np.where(self.op == LE, GT, np.where(self.op == LT, GE, self.op))
        return self

    def kernel_form(self):
        """(threshold float32, invert bool): the bit is ``(v >= threshold) xor invert`` per pixel."""
        op, t = self.op, self.t
        threshold = np.where((op == GE) | (op == LT), _ceil32(t), _above32(t)).astype(np.float32)
        threshold[np.isin(op, _CONSTANT)] = -np.inf
        invert = np.isin(op, (LE, LT, FALSE))
        return threshold, invert


@dataclass
class Chain:
    """Float layers between a sign's input and a packed conv that fold into a threshold test.

    ``source`` is "bits" when the chain starts at the output of the packed conv ``producer`` (which then
    writes bits), else "float": the chain starts at a float tensor that other layers may read too.
    ``modules`` are the folded layers in order (the sign last); ``pool`` the max-pool among them, if any.
    """
    consumer: str
    source: str
    producer: str | None
    modules: list
    pool: str | None
    threshold: np.ndarray
    invert: np.ndarray
    post_invert: np.ndarray | None


@dataclass
class AffineFold:
    """A BN that is the only reader of a float-writing packed conv's output: folded into its scales."""
    conv: str
    bn: str
    scale: np.ndarray
    shift: np.ndarray


@dataclass
class _Node:
    name: str
    module: nn.Module | None
    inputs: list
    outputs: list = field(default_factory=list)


class Dataflow:
    """One traced forward: the leaf layers and container-level functions in call order, which tensor
    version each reads and writes, and the readers of each version (``"output"`` for the model's output)."""

    def __init__(self, model, example, is_leaf):
        self.nodes, self.consumers, self.producer = [], defaultdict(list), {}
        self._version, self._keep, self._depth, self._calls = {}, [], 0, defaultdict(int)
        names = {module: name for name, module in model.named_modules()}
        leaves, handles = self._leaves(model, is_leaf), []
        for module in leaves:
            handles.append(module.register_forward_pre_hook(self._enter))
            handles.append(module.register_forward_hook(lambda m, a, out: self._leave(names[m], m, a, out)))
        try:
            with torch.no_grad(), _Recorder(self):
                out = model(example)
        finally:
            for handle in handles:
                handle.remove()
        for version in self._versions(out):
            self.consumers[version].append("output")
        self.calls = dict(self._calls)

    @staticmethod
    def _leaves(model, is_leaf):
        found, skip = [], set()
        for name, module in model.named_modules():
            if any(name.startswith(prefix + ".") for prefix in skip):
                continue
            if is_leaf(module) or not any(True for _ in module.children()):
                found.append(module)
                skip.add(name)
        return found

    def _tensors(self, value):
        if isinstance(value, torch.Tensor):
            return [value]
        if isinstance(value, (list, tuple)):
            return [t for v in value for t in self._tensors(v)]
        if isinstance(value, dict):
            return [t for v in value.values() for t in self._tensors(v)]
        return []

    def _versions(self, value):
        return [self._version[id(t)] for t in self._tensors(value) if id(t) in self._version]

    def _record(self, name, module, args, out):
        index = len(self.nodes)
        node = _Node(name, module, self._versions(args))
        for version in node.inputs:
            self.consumers[version].append(index)
        for t in self._tensors(out):
            self._keep.append(t)  # keep ids unique while tracing
            version = len(self.producer)
            self._version[id(t)] = version
            self.producer[version] = index
            node.outputs.append(version)
        self.nodes.append(node)

    def _enter(self, module, args):
        if self._depth == 0:
            self._keep.extend(self._tensors(args))
        self._depth += 1

    def _leave(self, name, module, args, out):
        self._depth -= 1
        if self._depth == 0:
            self._calls[name] += 1
            self._record(name, module, args, out)


class _Recorder(TorchFunctionMode):
    """Records the functions a container's forward calls (residual additions, flattening) as nodes."""

    def __init__(self, flow):
        super().__init__()
        self.flow = flow

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.flow._depth == 0 and self.flow._tensors(out):  # shape queries do not read a tensor's values
            self.flow._record(getattr(func, "__name__", str(func)), None, (args, kwargs), out)
        return out


def _monotone(module):
    """How ``module`` maps a channel's values: ("affine", a, c), ("clamp", lo, hi), ("identity",),
    ("maxpool",), or None when it does not fold."""
    if isinstance(module, nn.BatchNorm2d) and not module.training and module.running_mean is not None:
        std = torch.sqrt(module.running_var.detach().double() + module.eps)
        weight = module.weight.detach().double() if module.weight is not None else torch.ones_like(std)
        bias = module.bias.detach().double() if module.bias is not None else torch.zeros_like(std)
        scale = weight / std
        return ("affine", scale.numpy(), (bias - module.running_mean.detach().double() * scale).numpy())
    if isinstance(module, nn.ReLU):
        return ("clamp", 0.0, np.inf)
    if isinstance(module, nn.Hardtanh):
        return ("clamp", float(module.min_val), float(module.max_val))
    if isinstance(module, nn.Identity) or (isinstance(module, nn.modules.dropout._DropoutNd) and not module.training):
        return ("identity",)
    if (isinstance(module, nn.MaxPool2d) and not module.ceil_mode and not module.return_indices
            and _pair(module.dilation) == (1, 1)):
        return ("maxpool",)
    return None


def _pair(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _walk_back(flow, node_index, is_packed, is_sign):
    """The chain of single-reader layers in front of the packed conv at ``node_index``: (chain node
    indices in order, the version the chain starts from)."""
    node = flow.nodes[node_index]
    chain, version, pools = [], node.inputs[0] if node.inputs else None, 0
    while version is not None:
        reader = node_index if not chain else chain[0]
        if flow.consumers[version] != [reader] or version not in flow.producer:
            break
        index = flow.producer[version]
        prev = flow.nodes[index]
        if prev.module is None or flow.calls.get(prev.name) != 1 or len(prev.outputs) != 1 or len(prev.inputs) != 1:
            break
        kind = "sign" if is_sign(prev.module) else _monotone(prev.module)
        if not chain and kind != "sign":
            return [], None  # the conv's input is not a foldable sign's output
        if chain and (kind in (None, "sign") or is_packed(prev.module)):
            break
        if kind == ("maxpool",):
            pools += 1
            if pools > 1:
                break
        chain.insert(0, index)
        version = prev.inputs[0]
    return chain, version


def _predicate(flow, chain, channels):
    """The Predicate of a chain (its nodes in order, the sign last) on the tensor it starts from."""
    predicate, pool = Predicate(channels), None
    for index in reversed(chain[:-1]):
        node = flow.nodes[index]
        kind = _monotone(node.module)
        if kind[0] == "affine":
            predicate.through_affine(kind[1], kind[2])
        elif kind[0] == "clamp":
            predicate.through_clamp(kind[1], kind[2])
        elif kind[0] == "maxpool":
            predicate.through_maxpool()
            pool = node.name
    return predicate, pool


def find_folds(model, example, *, is_packed, is_sign):
    """The folds of ``model`` (traced on ``example``): a :class:`Chain` per packed conv whose input sign
    folds, then an :class:`AffineFold` per float-writing packed conv read only by a BN.

    ``is_packed(module)``: whether a module is a packed conv; ``is_sign(module)``: whether it is a sign
    in front of one whose input is the sign's input unchanged (no learned shift).
    """
    flow = Dataflow(model, example, lambda m: is_packed(m) or is_sign(m))
    chains, emitting = [], set()
    for index, node in enumerate(flow.nodes):
        if node.module is None or not is_packed(node.module) or flow.calls.get(node.name) != 1:
            continue
        chain, start = _walk_back(flow, index, is_packed, is_sign)
        if not chain:
            continue
        predicate, pool = _predicate(flow, chain, node.module.in_channels)
        threshold, invert = predicate.kernel_form()
        first = flow.producer.get(start)
        producer = flow.nodes[first] if first is not None else None
        bits = (producer is not None and producer.module is not None and is_packed(producer.module)
                and flow.consumers[start] == [chain[0]] and flow.calls.get(producer.name) == 1)
        chains.append(Chain(node.name, "bits" if bits else "float", producer.name if bits else None,
                            [flow.nodes[i].name for i in chain], pool, threshold, invert, predicate.post_invert))
        if bits:
            emitting.add(producer.name)
    return chains + _affine_folds(flow, is_packed, emitting)


def _affine_folds(flow, is_packed, emitting):
    folds = []
    for node in flow.nodes:
        if node.module is None or not is_packed(node.module) or node.name in emitting or len(node.outputs) != 1:
            continue
        readers = flow.consumers[node.outputs[0]]
        if len(readers) != 1 or readers[0] == "output" or flow.calls.get(node.name) != 1:
            continue
        bn = flow.nodes[readers[0]]
        kind = _monotone(bn.module) if bn.module is not None else None
        if kind and kind[0] == "affine" and flow.calls.get(bn.name) == 1:
            folds.append(AffineFold(node.name, bn.name, kind[1], kind[2]))
    return folds
