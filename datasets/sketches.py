"""The readers of TU-Berlin (Eitz et al., 2012) and Sketchy (Sangkloy et al., 2016): where each lives on disk,
how each layout is split, and ``read_tuberlin``/``read_sketchy``, which turn a folder into a DataBundle.

TU-Berlin: the native download `png/<class name>/<n>.png` (data_dir holds png/ or is png/) split into 3
stratified folds (splits.stratified_folds), or the original's pre-split `tuberlin/{train,val}/<class>/`.
Sketchy: the native `rendered_256x256/256x256/sketch/<variant>/<class>/<photoID>-<n>.png` split by
`info/testset.txt` (every sketch of a listed photo goes to val), or the pre-split
`sketchy_recognition/{train,val}/<class>/`. Either dataset also accepts `{train,val}/<class>/` directly
under data_dir.
"""
import os

import numpy as np

from .bundle import files_bundle
from .errors import DataError
from .folder import EXTENSIONS, Decode, FileSplit, is_class_tree, presplit, scan_class_tree
from .splits import stratified_folds
from .transforms import resize_for, sketch_transforms

NFOLDS = 3
SKETCHY_ROOTS = (("rendered_256x256", "256x256", "sketch"), ("256x256", "sketch"), ("sketch",))
INVALID_LISTS = ("invalid-ambiguous.txt", "invalid-context.txt", "invalid-error.txt", "invalid-pose.txt")


def find_presplit(data_dir, subdir):
    """The folder holding train/ and val/: data_dir/subdir or data_dir itself; None if neither."""
    for root in (os.path.join(data_dir, subdir), data_dir):
        if os.path.isdir(os.path.join(root, "train")) and os.path.isdir(os.path.join(root, "val")):
            return root
    return None


def no_layout(data_dir, name, looked_for):
    return DataError(f"no {name} layout found in {data_dir!r}; looked for " + ", ".join(looked_for)
                     + "; point --data_dir at the folder that holds one of them")


def tuberlin(data_dir, fold):
    """FileSplit for TU-Berlin: a pre-split layout if present, else the native png/ tree and `fold`."""
    if fold not in (1, 2, 3):
        raise ValueError(f"fold must be 1, 2 or 3, not {fold!r}")
    root = find_presplit(data_dir, "tuberlin")
    if root is not None:
        return presplit(root, f"tuberlin pre-split {root}")
    for png in (os.path.join(data_dir, "png"), data_dir):
        if is_class_tree(png):
            classes, samples = scan_class_tree(png)
            files = [p for p, _ in samples]
            labels = np.array([y for _, y in samples], dtype=np.int64)
            keys = [p.replace(os.sep, "/") for p in files]  # "<class>/<file>": the same on every OS
            folds = stratified_folds(keys, labels, NFOLDS)
            val = folds == fold - 1
            return FileSplit(png, files, labels, classes, np.flatnonzero(~val), np.flatnonzero(val),
                             f"tuberlin native png/ fold {fold}")
    raise no_layout(data_dir, "tuberlin", [
        "tuberlin/{train,val}/<class>/", "{train,val}/<class>/", "png/<class>/<n>.png",
        "<class>/<n>.png (data_dir = png/)"])


def _read_list(path):
    """Non-empty stripped lines (CRLF-safe) with '/' separators."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return [ln.strip().replace("\\", "/") for ln in f if ln.strip() and not ln.startswith("#")]


def _norm_class(name):
    return name.strip().lower().replace(" ", "_")


def _entry(line):
    """(class or None, stem) of a list line: '[...]/<class>/<name>[.ext]' or '<name>[.ext]'."""
    parts = line.split("/")
    stem = parts[-1]
    base, ext = os.path.splitext(stem)
    if ext.lower() in EXTENSIONS:
        stem = base
    return (_norm_class(parts[-2]) if len(parts) > 1 else None), stem


def _find_info(start, stop):
    """The first `info/` folder holding testset.txt, looking in start and its parents up to stop's parent."""
    folder = os.path.abspath(start)
    stop = os.path.dirname(os.path.abspath(stop))
    while True:
        info = os.path.join(folder, "info")
        if os.path.isfile(os.path.join(info, "testset.txt")):
            return info
        if folder in (stop, os.path.dirname(folder)):
            return None
        folder = os.path.dirname(folder)


def _sketchy_native_root(data_dir):
    """The `sketch/` folder (holding the tx_* variants) reachable from data_dir, or None."""
    for parts in SKETCHY_ROOTS:
        root = os.path.join(data_dir, *parts)
        if os.path.isdir(root):
            return root
    return None


def _drop_invalid(split, info):
    """Remove the sketches listed in info/invalid-*.txt from train and val; returns how many were dropped."""
    lists = [os.path.join(info, n) for n in INVALID_LISTS if os.path.isfile(os.path.join(info, n))]
    if not lists:
        raise DataError(f"sketchy_drop_invalid: no invalid-*.txt lists in {info!r}; put the Sketchy info/ "
                        f"folder there or leave sketchy_drop_invalid off")
    listed = {_entry(line) for path in lists for line in _read_list(path)}
    drop = []
    for i, f in enumerate(split.files):
        parts = f.replace(os.sep, "/").split("/")
        stem = os.path.splitext(parts[-1])[0]
        if (None, stem) in listed or (_norm_class(parts[-2]), stem) in listed:
            drop.append(i)
    split.drop(drop)
    split.layout += f", {len(drop)} invalid dropped"
    return len(drop)


def sketchy(data_dir, variant, drop_invalid):
    """FileSplit for Sketchy: a pre-split layout if present, else the native tree split by testset.txt."""
    root = find_presplit(data_dir, "sketchy_recognition")
    if root is not None:
        split = presplit(root, f"sketchyrecognition pre-split {root}")
        if drop_invalid:
            info = _find_info(root, data_dir)
            if info is None:
                raise DataError(f"sketchy_drop_invalid needs Sketchy's info/ folder (invalid-*.txt) in "
                                f"{data_dir!r} or above {root!r}; copy it there or leave the option off")
            _drop_invalid(split, info)
        return split
    sketch_root = _sketchy_native_root(data_dir)
    if sketch_root is None:
        raise no_layout(data_dir, "sketchyrecognition", [
            "sketchy_recognition/{train,val}/<class>/", "{train,val}/<class>/",
            "rendered_256x256/256x256/sketch/<variant>/ with info/testset.txt",
            "256x256/sketch/<variant>/", "sketch/<variant>/"])
    vdir = os.path.join(sketch_root, variant)
    if not os.path.isdir(vdir):
        have = sorted(d for d in os.listdir(sketch_root) if os.path.isdir(os.path.join(sketch_root, d)))
        raise DataError(f"Sketchy variant folder {vdir!r} not found (present: {have}); pass one of those as "
                        f"sketchy_variant or unpack rendered_256x256 completely")
    info = _find_info(sketch_root, data_dir)
    if info is None:
        raise DataError(f"Sketchy info/testset.txt not found in {data_dir!r} or above {sketch_root!r}; unpack "
                        f"Sketchy's info archive so that info/ sits next to rendered_256x256/")
    classes, samples = scan_class_tree(vdir)
    files = [p for p, _ in samples]
    labels = np.array([y for _, y in samples], dtype=np.int64)
    test_photos = {_entry(line) for line in _read_list(os.path.join(info, "testset.txt"))}
    is_val = np.zeros(len(files), dtype=bool)
    for i, f in enumerate(files):
        parts = f.replace(os.sep, "/").split("/")
        photo = os.path.splitext(parts[-1])[0].rsplit("-", 1)[0]   # <photoID>-<n>.png -> <photoID>
        is_val[i] = (None, photo) in test_photos or (_norm_class(parts[0]), photo) in test_photos
    if not is_val.any():
        raise DataError(f"no sketch under {vdir!r} belongs to a photo listed in "
                        f"{os.path.join(info, 'testset.txt')!r}; expected lines like 'airplane/n02691156_10151.jpg'")
    split = FileSplit(vdir, files, labels, classes, np.flatnonzero(~is_val), np.flatnonzero(is_val),
                      f"sketchyrecognition native {variant} testset.txt split")
    if drop_invalid:
        _drop_invalid(split, info)
    return split


def _sketch_bundle(name, data_dir, split, opts):
    """Sketches decode as 1-channel luma, inverted (ink high), the shorter side resized as the original did."""
    decode = Decode("L", resize_for(opts.inpsize), invert=True)
    return files_bundle(name, data_dir, split, decode, decode,
                        *sketch_transforms(name, opts.inpsize, augment=opts.augment, ten_crop=opts.ten_crop), opts)


def read_tuberlin(name, data_dir, opts):
    """The TU-Berlin DataBundle of ``data_dir``; ``opts.fold`` picks the val fold of the native layout."""
    return _sketch_bundle(name, data_dir, tuberlin(data_dir, opts.fold), opts)


def read_sketchy(name, data_dir, opts):
    """The Sketchy DataBundle of ``data_dir`` (``opts.sketchy_variant``, ``opts.sketchy_drop_invalid``)."""
    return _sketch_bundle(name, data_dir, sketchy(data_dir, opts.sketchy_variant, opts.sketchy_drop_invalid), opts)
