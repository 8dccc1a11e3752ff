"""CIFAR-10/100 through torchvision's readers (never downloading) and ImageNet as `{train,val}/<wnid>/`."""
import os
import pickle

from torchvision.datasets import CIFAR10, CIFAR100

from .errors import DataError
from .folder import presplit
from .sketches import no_layout


def _presence_only(file_list):
    return [[name, None] for name, _ in file_list]


class LocalCIFAR10(CIFAR10):
    """torchvision's CIFAR-10 reader checking that the files exist, not their md5 (which costs a read of
    every batch at each start); a damaged file still fails while unpickling and becomes a DataError."""
    train_list = _presence_only(CIFAR10.train_list)
    test_list = _presence_only(CIFAR10.test_list)
    meta = {**CIFAR10.meta, "md5": None}


class LocalCIFAR100(CIFAR100):
    """CIFAR-100 counterpart of LocalCIFAR10."""
    train_list = _presence_only(CIFAR100.train_list)
    test_list = _presence_only(CIFAR100.test_list)
    meta = {**CIFAR100.meta, "md5": None}


CIFAR = {"cifar10": (LocalCIFAR10, "cifar-10-python.tar.gz"), "cifar100": (LocalCIFAR100, "cifar-100-python.tar.gz")}


def cifar(name, data_dir, train_transform, val_transform):
    """(train, val) torchvision CIFAR datasets read from data_dir (or from its parent when data_dir is the
    batches folder itself)."""
    cls, archive = CIFAR[name]
    root = data_dir
    if os.path.basename(os.path.normpath(data_dir)) == cls.base_folder:
        root = os.path.dirname(os.path.normpath(data_dir))
    folder = os.path.join(root, cls.base_folder)
    fix = (f"download {archive} from https://www.cs.toronto.edu/~kriz/cifar.html and extract it into "
           f"{root!r} (nothing is downloaded at run time)")
    if not os.path.isdir(folder):
        raise DataError(f"{name} not found: no {cls.base_folder}/ in {root!r}; {fix}")
    needed = [n for n, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    missing = [n for n in needed if not os.path.isfile(os.path.join(folder, n))]
    if missing:
        raise DataError(f"{name}: {folder!r} lacks {missing}; {fix}")
    try:
        return (cls(root, train=True, transform=train_transform),
                cls(root, train=False, transform=val_transform))
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, RuntimeError) as e:
        raise DataError(f"{name}: a file in {folder!r} is damaged ({type(e).__name__}: {e}); {fix}") from e


def imagenet(data_dir):
    """FileSplit for `<data_dir>/{train,val}/<wnid>/*.JPEG`."""
    train, val = os.path.join(data_dir, "train"), os.path.join(data_dir, "val")
    if not (os.path.isdir(train) and os.path.isdir(val)):
        raise no_layout(data_dir, "imagenet12", ["{train,val}/<wnid>/*.JPEG"])
    try:
        return presplit(data_dir, f"imagenet12 {data_dir}")
    except DataError as e:
        if "no class folders" in str(e):
            raise DataError(f"{e}; ImageNet's val images must be sorted into <wnid>/ folders first "
                            f"(e.g. with the devkit's ground truth)") from e
        raise
