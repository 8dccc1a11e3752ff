"""Image folders on disk: finding class trees, checking files, decoding, and the Dataset that serves them.

Scanning reuses torchvision's `make_dataset` (sorted walk, case-insensitive extensions). What is added here:
hidden entries (`.DS_Store`, `._x.png`, `.dabnet_cache/`, `__MACOSX/`) are never classes or images, an
empty class folder is an error that names it, and every file is opened once at build time (`Image.verify`,
cheap: headers and PNG chunk CRCs) so a truncated or unreadable image fails before training starts.
"""
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets.folder import make_dataset
from torchvision.transforms.v2 import functional as F

from .errors import DataError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp")
SKIP_FIX = "delete or replace it, or pass --skipBadImages to skip unreadable images"


def is_image_file(path):
    """True for a visible file with one of EXTENSIONS, in any case."""
    name = os.path.basename(path)
    return not name.startswith(".") and name.lower().endswith(EXTENSIONS)


def class_dirs(root):
    """Sorted names of the visible subfolders of root (the class folders)."""
    with os.scandir(root) as entries:
        return sorted(e.name for e in entries
                      if e.is_dir() and not e.name.startswith(".") and e.name != "__MACOSX")


def has_images(folder):
    with os.scandir(folder) as entries:
        return any(e.is_file() and is_image_file(e.name) for e in entries)


def is_class_tree(root):
    """A folder whose subfolders hold images: at least one of them must hold some directly."""
    return os.path.isdir(root) and any(has_images(os.path.join(root, c)) for c in class_dirs(root))


def scan_class_tree(root, classes=None):
    """(classes, [(path relative to root, label)]) for root/<class>/**/<image>; empty classes are errors."""
    classes = class_dirs(root) if classes is None else classes
    class_to_idx = {c: i for i, c in enumerate(classes)}
    samples = make_dataset(root, class_to_idx, is_valid_file=is_image_file, allow_empty=True)
    found = {label for _, label in samples}
    empty = [c for c in classes if class_to_idx[c] not in found]
    if empty:
        where = os.path.join(root, empty[0])
        more = f" (and {len(empty) - 1} more empty class folders)" if len(empty) > 1 else ""
        raise DataError(f"class folder {where!r} has no images ({' '.join(e[1:] for e in EXTENSIONS)}){more}; "
                        f"add its images or delete the folder")
    return classes, [(os.path.relpath(p, root), y) for p, y in samples]


@dataclass
class FileSplit:
    """Every image file of one layout (the cache covers all of them) and which of them train and validate."""
    root: str
    files: list          # paths relative to root
    labels: np.ndarray   # int64, one per file
    classes: list
    train: np.ndarray    # indices into files
    val: np.ndarray
    layout: str          # for DataBundle.description

    def drop(self, indices):
        """Remove the given file indices from train and val (files stay listed for the cache)."""
        gone = np.fromiter(indices, dtype=np.int64)
        self.train = self.train[~np.isin(self.train, gone)]
        self.val = self.val[~np.isin(self.val, gone)]


def presplit(root, layout):
    """FileSplit for root/{train,val}/<class>/: both sides must hold the same class folders."""
    train_classes = class_dirs(os.path.join(root, "train"))
    val_classes = class_dirs(os.path.join(root, "val"))
    if not train_classes or not val_classes:
        side = "train" if not train_classes else "val"
        raise DataError(f"{os.path.join(root, side)!r} has no class folders; it must hold one folder of images "
                        f"per class (<class>/<image>), as {'train' if side == 'val' else 'val'}/ does")
    if train_classes != val_classes:
        only_train = sorted(set(train_classes) - set(val_classes))
        only_val = sorted(set(val_classes) - set(train_classes))
        raise DataError(f"train and val class folders differ under {root!r}: only in train {only_train[:5]}, "
                        f"only in val {only_val[:5]}; make both sides hold the same class folders")
    files, labels, sides = [], [], []
    for side in ("train", "val"):
        _, samples = scan_class_tree(os.path.join(root, side), train_classes)
        files += [os.path.join(side, p) for p, _ in samples]
        labels += [y for _, y in samples]
        sides += [side == "val"] * len(samples)
    sides = np.array(sides, dtype=bool)
    return FileSplit(root, files, np.array(labels, dtype=np.int64), train_classes,
                     np.flatnonzero(~sides), np.flatnonzero(sides), layout)


def _probe(path):
    """Image size (w, h) after a structural check of the whole file; raises on unreadable files."""
    with Image.open(path) as im:
        size = im.size
        im.verify()
    return size


def probe_all(paths, workers=None):
    """(sizes, bad): sizes[i] is (w, h) or None; bad maps index -> reason for files PIL cannot read."""
    def one(path):
        try:
            return _probe(path), None
        except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
            return None, f"{type(e).__name__}: {e}"
    workers = workers or min(16, 4 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(one, paths, chunksize=64))
    sizes = [s for s, _ in results]
    bad = {i: why for i, (_, why) in enumerate(results) if why is not None}
    return sizes, bad


def bad_image_error(path, why, count):
    more = f" ({count - 1} more unreadable images)" if count > 1 else ""
    return DataError(f"cannot read image {path!r} ({why}){more}; {SKIP_FIX}")


@dataclass(frozen=True)
class Decode:
    """File -> uint8 tensor [C, H, W]: PIL decode, convert to `mode`, resize the shorter side, invert.

    mode 'L' uses PIL's ITU-R 601-2 luma as the original's grayscale loader did; transparent pixels are
    composited on white first (the original's convert('L') would have turned them black, i.e. into ink).
    The shorter side is resized with PIL bilinear, as the original's Scale(256). Inverting here, in uint8
    (255 - x), gives exactly the original's float 1 - x/255 after scaling, and makes 0 the background, so
    every later geometric transform fills with background.
    """
    mode: str = "L"
    resize: int = None
    invert: bool = False

    def out_hw(self, w, h):
        """(H, W) that __call__ returns for a w x h file (torchvision's shorter-side rule)."""
        if self.resize is None:
            return h, w
        if w <= h:
            return int(self.resize * h / w), self.resize
        return self.resize, int(self.resize * w / h)

    def __call__(self, path):
        with Image.open(path) as im:
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im)
            im = im.convert(self.mode)
            if self.resize is not None:
                h, w = self.out_hw(*im.size)
                im = im.resize((w, h), Image.BILINEAR)
            x = F.pil_to_tensor(im)
        return F.invert(x) if self.invert else x


class ImageFiles(Dataset):
    """(transform(image), label) for a list of files, decoded on the fly or read from a UInt8Cache."""

    def __init__(self, root, files, labels, classes, decode, transform, cache=None, rows=None):
        self.root, self.files, self.classes = root, list(files), list(classes)
        self.targets = [int(y) for y in labels]
        self.decode, self.transform = decode, transform
        self.cache, self.rows = cache, rows

    def __len__(self):
        return len(self.files)

    def load(self, i):
        """The uint8 tensor before the random transforms (what the cache stores)."""
        if self.cache is not None:
            return self.cache[int(self.rows[i])]
        path = os.path.join(self.root, self.files[i])
        try:
            return self.decode(path)
        except Exception as e:  # passed verify() at build time but does not decode
            raise bad_image_error(path, f"{type(e).__name__}: {e}", 1) from e

    def __getitem__(self, i):
        return self.transform(self.load(i)), self.targets[i]


class TensorImages(Dataset):
    """(transform(images[i]), label) over an in-memory uint8 tensor [N, C, H, W]."""

    def __init__(self, images, labels, classes, transform):
        self.images, self.classes, self.transform = images, list(classes), transform
        self.targets = [int(y) for y in labels]

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.targets[i]

