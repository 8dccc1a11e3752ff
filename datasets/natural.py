"""The readers of CIFAR-10/100 (torchvision's readers, never downloading) and of ImageNet as
`{train,val}/<wnid>/`: ``read_cifar`` and ``read_imagenet`` turn a folder into a DataBundle."""
import os
import pickle

from torchvision.datasets import CIFAR10, CIFAR100

from .bundle import DataBundle, files_bundle
from .errors import DataError
from .folder import Decode, presplit
from .sketches import no_layout
from .transforms import IMAGENET_NORM, cifar_transforms, imagenet_transforms, resize_for

# ImageNet as 1-channel (grayscale=True): the ITU-R 601 luma weights applied to the RGB mean and std.
IMAGENET_GRAY_NORM = ((0.459,), (0.226,))


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


def read_imagenet(name, data_dir, opts):
    """The ImageNet DataBundle of ``data_dir`` (1-channel luma with ``opts.grayscale``).

    Uncached, train crops come from the full-size image (as the original); cached (and val), from the
    image resized to shorter side 256 (the cache must hold a bounded size)."""
    split = imagenet(data_dir)
    mode = "L" if opts.grayscale else "RGB"
    mean, std = IMAGENET_GRAY_NORM if opts.grayscale else IMAGENET_NORM
    decode = Decode(mode, resize_for(opts.inpsize))
    train_decode = Decode(mode, None) if opts.augment and not opts.cachemode else decode
    return files_bundle(name, data_dir, split, decode, train_decode,
                        *imagenet_transforms(opts.inpsize, mean, std, augment=opts.augment, ten_crop=opts.ten_crop),
                        opts)


def read_cifar(name, data_dir, opts):
    """The CIFAR-10 or CIFAR-100 DataBundle of ``data_dir`` (torchvision's in-memory reader; cachemode is
    not needed and ignored; ``opts.imagenet_norm`` normalises with ImageNet's mean and std)."""
    train_tf, val_tf = cifar_transforms(name, opts.inpsize, augment=opts.augment, ten_crop=opts.ten_crop,
                                        norm=IMAGENET_NORM if opts.imagenet_norm else None)
    train, val = cifar(name, data_dir, train_tf, val_tf)
    return DataBundle(train, val, len(train.classes), 3, list(train.classes),
                      f"{name} {data_dir}: {len(train)} train / {len(val)} val")
