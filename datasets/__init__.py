"""Datasets of dabnet: `build(name, data_dir, ...)` returns the train and val datasets plus what the model
needs (number of classes and channels, class names), reading each dataset as it unpacks.

Every dataset is one record of ``TABLE`` (a ``DatasetRecord``: name, aliases, classes and channels as it
unpacks, native image size, reader, the build keywords specific to it); ``DATASETS`` (the names
``--dataset`` accepts), ``SHAPES`` and ``native_size`` are views of that table. A new dataset is one record
plus its reader module: ``read(name, data_dir, options) -> DataBundle``.

Names: tuberlin, sketchyrecognition (alias sketchy), cifar10, cifar100, imagenet12 and the embedded default
digits. Readers, layouts and splits: sketches.py, natural.py, digits.py; transforms and their deviations
from the original: transforms.py; the optional uint8 disk cache: cache.py.
"""
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields

from .bundle import DataBundle, Options
from .digits import read_digits
from .errors import DataError
from .loader import epoch_seed, make_loaders
from .natural import read_cifar, read_imagenet
from .sketches import read_sketchy, read_tuberlin
from .transforms import average_crops

__all__ = ["DATASETS", "SHAPES", "TABLE", "DataBundle", "DataError", "DatasetRecord", "Options", "average_crops",
           "build", "epoch_seed", "make_loaders", "native_size", "record", "register"]


@dataclass(frozen=True)
class DatasetRecord:
    """Everything dabnet knows about one dataset before reading it.

    ``read(name, data_dir, options)`` returns its DataBundle (``options`` an ``Options``). ``num_classes`` and
    ``channels`` are the dataset's as it unpacks (what --summary and --export use without data).
    ``native_size`` is the side of its images where they all have one (the original ignored --inpsize for
    those), ``needs_data_dir`` False for a dataset that comes with the code, ``options`` the ``Options``
    fields specific to it (the others apply to every dataset or are ignored by its reader).
    """
    name: str
    num_classes: int
    channels: int
    read: Callable
    native_size: int = None
    aliases: tuple = ()
    needs_data_dir: bool = True
    options: frozenset = frozenset()
    label: str = None  # the display name of reports ("TU-Berlin"); None: the name

    @property
    def display_name(self):
        return self.label or self.name


OPTION_NAMES = frozenset(f.name for f in fields(Options))
TABLE = {}  # name -> DatasetRecord, in the order --dataset lists them


def register(entry):
    """Add a DatasetRecord to ``TABLE``; ValueError for a name or alias already taken or an unknown option."""
    taken = [n for n in (entry.name, *entry.aliases) if n in DATASETS]
    if taken:
        raise ValueError(f"dataset name {taken[0]!r} registered twice")
    unknown = sorted(set(entry.options) - OPTION_NAMES)
    if unknown:
        raise ValueError(f"dataset {entry.name!r}: unknown options {unknown}; choose from {sorted(OPTION_NAMES)}")
    TABLE[entry.name] = entry
    return entry


class _Names(Sequence):
    """Every accepted name, each record's name followed by its aliases (a live view of TABLE)."""

    def _names(self):
        return [n for entry in TABLE.values() for n in (entry.name, *entry.aliases)]

    def __getitem__(self, i):
        return self._names()[i]

    def __len__(self):
        return len(self._names())

    def __contains__(self, name):
        return any(name == entry.name or name in entry.aliases for entry in TABLE.values())

    def __repr__(self):
        return repr(tuple(self._names()))


class _Shapes(Mapping):
    """name or alias -> (classes, channels) as the dataset unpacks (a live view of TABLE)."""

    def __getitem__(self, name):
        if name not in DATASETS:
            raise KeyError(name)
        entry = record(name)
        return entry.num_classes, entry.channels

    def __iter__(self):
        return iter(DATASETS)

    def __len__(self):
        return len(DATASETS)


DATASETS = _Names()
SHAPES = _Shapes()


def record(name):
    """The DatasetRecord of ``name`` (a name or an alias); ValueError naming the choices otherwise."""
    for entry in TABLE.values():
        if name == entry.name or name in entry.aliases:
            return entry
    raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")


def native_size(name):
    """The one image size of ``name`` (None where --inpsize applies)."""
    return record(name).native_size


def build(name, data_dir, *, inpsize, ten_crop=False, fold=1, cachemode=False, cache_dir=None,
          skip_bad_images=False, sketchy_variant="tx_000000000000", sketchy_drop_invalid=False, augment=True,
          grayscale=False, imagenet_norm=False):
    """Train/val datasets for `name` read from `data_dir` (ignored where the dataset needs none).

    fold picks the TU-Berlin native val fold (1..3); cachemode decodes every image once into a uint8 cache
    under cache_dir (default `<data_dir>/.dabnet_cache`, else `~/.cache/dabnet`); skip_bad_images skips
    unreadable files with a warning instead of raising DataError; augment=False makes the train transform
    the deterministic val one; grayscale (imagenet12 only) decodes ImageNet as 1-channel luma; imagenet_norm
    (CIFAR only) normalises with ImageNet's mean and std instead of the dataset's (SD-BNN's recipe).
    """
    entry = record(name)
    if grayscale and "grayscale" not in entry.options:
        # the one option that changes what the model sees (its channel count): refused, not ignored
        takers = ", ".join(e.name for e in TABLE.values() if "grayscale" in e.options)
        raise ValueError(f"grayscale=True applies to {takers} only; {entry.name} is read as its "
                         f"{entry.channels}-channel images are")
    opts = Options(inpsize, ten_crop, fold, cachemode, cache_dir, skip_bad_images, sketchy_variant,
                   sketchy_drop_invalid, augment, grayscale, imagenet_norm)
    if entry.needs_data_dir:
        _check_data_dir(entry.name, data_dir)
        data_dir = os.fspath(data_dir)
    return entry.read(entry.name, data_dir, opts)


def _check_data_dir(name, data_dir):
    if data_dir is None or not os.path.isdir(data_dir):
        what = "is not set" if data_dir is None else f"{os.fspath(data_dir)!r} does not exist or is not a folder"
        raise DataError(f"data_dir {what}; point --data_dir at the unpacked {name} dataset (or use --dataset digits, "
                        f"which needs no data)")
    if not any(not e.startswith(".") for e in os.listdir(data_dir)):
        raise DataError(f"data_dir {os.fspath(data_dir)!r} is empty; unpack the {name} dataset there")


for _entry in (
    DatasetRecord("tuberlin", 250, 1, read_tuberlin, options=frozenset({"fold"}), label="TU-Berlin"),
    DatasetRecord("sketchyrecognition", 125, 1, read_sketchy, aliases=("sketchy",),
                  options=frozenset({"sketchy_variant", "sketchy_drop_invalid"}), label="Sketchy"),
    DatasetRecord("cifar10", 10, 3, read_cifar, native_size=32, options=frozenset({"imagenet_norm"}),
                  label="CIFAR-10"),
    DatasetRecord("cifar100", 100, 3, read_cifar, native_size=32, options=frozenset({"imagenet_norm"}),
                  label="CIFAR-100"),
    DatasetRecord("imagenet12", 1000, 3, read_imagenet, options=frozenset({"grayscale"}), label="ImageNet"),
    DatasetRecord("digits", 10, 1, read_digits, needs_data_dir=False),
):
    register(_entry)
del _entry
