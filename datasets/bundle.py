"""What a dataset reader returns (DataBundle), what it is asked for (Options), and the shared path from a
FileSplit of image files to a checked, optionally cached DataBundle (``files_bundle``)."""
import hashlib
import os
import warnings
from dataclasses import dataclass

from torch.utils.data import Dataset

from .cache import build_cache, cache_key, default_cache_dir, open_cache
from .errors import DataError
from .folder import ImageFiles, bad_image_error, probe_all


@dataclass
class DataBundle:
    """What a reader returns; val items are [10, C, H, W] when ten_crop."""
    train: Dataset
    val: Dataset
    num_classes: int
    num_channels: int
    classes: list
    description: str


@dataclass(frozen=True)
class Options:
    """The keywords of ``datasets.build`` after the name and folder, as every reader receives them.

    A reader uses those that apply to it and ignores the rest (``fold`` means nothing to CIFAR); the
    dataset's record lists the ones specific to it.
    """
    inpsize: int
    ten_crop: bool = False
    fold: int = 1
    cachemode: bool = False
    cache_dir: str = None
    skip_bad_images: bool = False
    sketchy_variant: str = "tx_000000000000"
    sketchy_drop_invalid: bool = False
    augment: bool = True
    grayscale: bool = False
    imagenet_norm: bool = False


def files_bundle(name, data_dir, split, decode, train_decode, train_tf, val_tf, opts):
    """Check every file of ``split`` (or find a finished cache), build the cache if asked, and wrap the two
    subsets as ImageFiles datasets.

    Nothing is written before all files have passed the check; a file that fails only at full decode
    (while the cache is built) also leaves nothing behind. A finished cache is trusted: its files are not
    checked again.
    """
    paths = [os.path.join(split.root, f) for f in split.files]
    cache = cache_dir = tag = key = None
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
    note = _drop_bad(split, paths, bad)
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


def _drop_bad(split, paths, bad):
    """Drop the unreadable files from ``split`` with one warning; the note for the description."""
    if not bad:
        return ""
    first = min(bad)
    warnings.warn(f"skipped {len(bad)} unreadable images under {split.root!r}, e.g. {paths[first]!r} "
                  f"({bad[first]})", stacklevel=4)
    split.drop(bad)
    return f", {len(bad)} unreadable skipped"
