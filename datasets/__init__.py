"""Datasets of dabnet: `build(name, data_dir, ...)` returns the train and val datasets plus what the model
needs (number of classes and channels, class names), reading each dataset as it unpacks.

Names (`DATASETS`): tuberlin, sketchyrecognition (alias sketchy), cifar10, cifar100, imagenet12 and the
embedded default digits. Layouts and splits: sketches.py and natural.py; transforms and their deviations
from the original: transforms.py; the optional uint8 disk cache: cache.py; the digits: digits.py.
"""
import hashlib
import os
import warnings
from dataclasses import dataclass

from torch.utils.data import Dataset

from . import natural, sketches
from .cache import build_cache, cache_key, default_cache_dir, open_cache
from .digits import digits
from .errors import DataError
from .folder import Decode, ImageFiles, bad_image_error, probe_all
from .loader import epoch_seed, make_loaders
from .transforms import (IMAGENET_NORM, average_crops, cifar_transforms, imagenet_transforms, resize_for,
                         sketch_transforms)

__all__ = ["DATASETS", "SHAPES", "DataBundle", "DataError", "average_crops", "build", "epoch_seed", "make_loaders",
           "native_size"]

ALIASES = {"sketchy": "sketchyrecognition"}
DATASETS = ("tuberlin", "sketchyrecognition", "sketchy", "cifar10", "cifar100", "imagenet12", "digits")
# (classes, channels) of each dataset as it unpacks, for what needs no data (--summary, --export).
SHAPES = {"digits": (10, 1), "tuberlin": (250, 1), "sketchyrecognition": (125, 1), "sketchy": (125, 1),
          "cifar10": (10, 3), "cifar100": (100, 3), "imagenet12": (1000, 3)}
# Datasets whose images have one size: the original ignored --inpsize for them (its CIFAR lines pass 225).
NATIVE_SIZE = {"cifar10": 32, "cifar100": 32}


def native_size(name):
    """The one image size of ``name`` (None where --inpsize applies)."""
    return NATIVE_SIZE.get(ALIASES.get(name, name))
# ImageNet as 1-channel (grayscale=True): the ITU-R 601 luma weights applied to the RGB mean and std above.
IMAGENET_GRAY_NORM = ((0.459,), (0.226,))


@dataclass
class DataBundle:
    """What build() returns; val items are [10, C, H, W] when ten_crop."""
    train: Dataset
    val: Dataset
    num_classes: int
    num_channels: int
    classes: list
    description: str


@dataclass(frozen=True)
class Options:
    inpsize: int
    ten_crop: bool
    fold: int
    cachemode: bool
    cache_dir: str
    skip_bad_images: bool
    sketchy_variant: str
    sketchy_drop_invalid: bool
    augment: bool
    grayscale: bool
    imagenet_norm: bool


def build(name, data_dir, *, inpsize, ten_crop=False, fold=1, cachemode=False, cache_dir=None,
          skip_bad_images=False, sketchy_variant="tx_000000000000", sketchy_drop_invalid=False, augment=True,
          grayscale=False, imagenet_norm=False):
    """Train/val datasets for `name` read from `data_dir` (ignored for digits); see the module docstring.

    fold picks the TU-Berlin native val fold (1..3); cachemode decodes every image once into a uint8 cache
    under cache_dir (default `<data_dir>/.dabnet_cache`, else `~/.cache/dabnet`); skip_bad_images skips
    unreadable files with a warning instead of raising DataError; augment=False makes the train transform
    the deterministic val one; grayscale (imagenet12 only) decodes ImageNet as 1-channel luma; imagenet_norm
    (CIFAR only) normalises with ImageNet's mean and std instead of the dataset's (SD-BNN's recipe).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    name = ALIASES.get(name, name)
    if grayscale and name != "imagenet12":
        raise ValueError("grayscale=True applies to imagenet12 only (the sketch datasets and digits are "
                         "1-channel already)")
    opts = Options(inpsize, ten_crop, fold, cachemode, cache_dir, skip_bad_images, sketchy_variant,
                   sketchy_drop_invalid, augment, grayscale, imagenet_norm)
    if name == "digits":
        train, val, classes, description = digits(inpsize, augment=augment, ten_crop=ten_crop)
        return DataBundle(train, val, len(classes), 1, classes, description)
    _check_data_dir(name, data_dir)
    return BUILDERS[name](name, os.fspath(data_dir), opts)


def _check_data_dir(name, data_dir):
    if data_dir is None or not os.path.isdir(data_dir):
        what = "is not set" if data_dir is None else f"{os.fspath(data_dir)!r} does not exist or is not a folder"
        raise DataError(f"data_dir {what}; point --data_dir at the unpacked {name} dataset (or use --dataset digits, "
                        f"which needs no data)")
    if not any(not e.startswith(".") for e in os.listdir(data_dir)):
        raise DataError(f"data_dir {os.fspath(data_dir)!r} is empty; unpack the {name} dataset there")


def _tuberlin(name, data_dir, opts):
    split = sketches.tuberlin(data_dir, opts.fold)
    decode = Decode("L", resize_for(opts.inpsize), invert=True)
    return _files_bundle(name, data_dir, split, decode, decode,
                         *sketch_transforms(name, opts.inpsize, augment=opts.augment, ten_crop=opts.ten_crop),
                         opts)


def _sketchy(name, data_dir, opts):
    split = sketches.sketchy(data_dir, opts.sketchy_variant, opts.sketchy_drop_invalid)
    decode = Decode("L", resize_for(opts.inpsize), invert=True)
    return _files_bundle(name, data_dir, split, decode, decode,
                         *sketch_transforms(name, opts.inpsize, augment=opts.augment, ten_crop=opts.ten_crop),
                         opts)


def _imagenet(name, data_dir, opts):
    """Uncached, train crops come from the full-size image (as the original); cached (and val), from the
    image resized to shorter side 256 (the cache must hold a bounded size)."""
    split = natural.imagenet(data_dir)
    mode = "L" if opts.grayscale else "RGB"
    mean, std = IMAGENET_GRAY_NORM if opts.grayscale else IMAGENET_NORM
    decode = Decode(mode, resize_for(opts.inpsize))
    train_decode = Decode(mode, None) if opts.augment and not opts.cachemode else decode
    return _files_bundle(name, data_dir, split, decode, train_decode,
                         *imagenet_transforms(opts.inpsize, mean, std, augment=opts.augment, ten_crop=opts.ten_crop),
                         opts)


def _cifar(name, data_dir, opts):
    """torchvision's in-memory CIFAR; cachemode is not needed and ignored."""
    train_tf, val_tf = cifar_transforms(name, opts.inpsize, augment=opts.augment, ten_crop=opts.ten_crop,
                                        norm=IMAGENET_NORM if opts.imagenet_norm else None)
    train, val = natural.cifar(name, data_dir, train_tf, val_tf)
    return DataBundle(train, val, len(train.classes), 3, list(train.classes),
                      f"{name} {data_dir}: {len(train)} train / {len(val)} val")


BUILDERS = {"tuberlin": _tuberlin, "sketchyrecognition": _sketchy, "imagenet12": _imagenet,
            "cifar10": _cifar, "cifar100": _cifar}


def _files_bundle(name, data_dir, split, decode, train_decode, train_tf, val_tf, opts):
    """Check every file (or find a finished cache), build the cache if asked, and wrap the two subsets.

    Nothing is written before all files have passed the check; a file that fails only at full decode
    (while the cache is built) also leaves nothing behind.
    """
    paths = [os.path.join(split.root, f) for f in split.files]
    cache = None
    if opts.cachemode:
        cache_dir = os.fspath(opts.cache_dir) if opts.cache_dir else default_cache_dir(data_dir)
        tag = f"{name}-{hashlib.sha256(os.path.abspath(split.root).encode()).hexdigest()[:8]}"
        key = cache_key(split.root, split.files, decode)
        cache = open_cache(cache_dir, tag, key)
    if cache is not None:
        bad = cache.bad   # a finished cache has decoded every file: no need to check them again
    else:
        sizes, bad = probe_all(paths)
    if bad and not opts.skip_bad_images:
        first = min(bad)
        raise bad_image_error(paths[first], bad[first], len(bad))
    if opts.cachemode and cache is None:
        cache = build_cache(cache_dir, tag, key, split.root, split.files, decode, sizes,
                            skip_bad=opts.skip_bad_images, bad=bad)
        bad = cache.bad
    note = ""
    if bad:
        first = min(bad)
        warnings.warn(f"skipped {len(bad)} unreadable images under {split.root!r}, e.g. {paths[first]!r} "
                      f"({bad[first]})", stacklevel=3)
        split.drop(bad)
        note = f", {len(bad)} unreadable skipped"
    for side, idx in (("train", split.train), ("val", split.val)):
        if len(idx) == 0:
            raise DataError(f"{split.layout}: no {side} images left under {split.root!r}; check the layout")

    def subset(idx, dec, transform):
        return ImageFiles(split.root, [split.files[i] for i in idx], split.labels[idx], split.classes, dec,
                          transform, cache, idx if cache is not None else None)

    train = subset(split.train, train_decode if cache is None else decode, train_tf)
    val = subset(split.val, decode, val_tf)
    cached = ", cached" if cache is not None else ""
    return DataBundle(train, val, len(split.classes), 1 if decode.mode == "L" else 3, list(split.classes),
                      f"{split.layout}: {len(train)} train / {len(val)} val{note}{cached}")
