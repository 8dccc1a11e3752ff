"""The embedded default: scikit-learn's UCI handwritten digits (1,797 8x8 images, 10 classes, no download)
rendered like inverted sketches, so `python main.py` trains on a fresh machine with no data at hand.

Each 8x8 digit (ink 16, background 0), with a zero border, is upsampled bicubically so that the digit
spans 70% of a square canvas of side max(inpsize, round(inpsize * 256 / 224)) (the sketches' 256-for-224
ratio) and centred on it, as uint8 with ink high and background 0. The canvas is to the digits what the 256 resize is to the sketches: val takes
its centre crop (or ten crops) of inpsize; train takes a light random resized crop (area 60-100%, aspect
0.9-1.1) and an integer rotation in [-10, 10] with background fill (no flip: digits are not mirror-
symmetric). Normalization uses the mean and std of the training images' centre crops. The split is
stratified and fixed: 1/5 of each class (by file-name hash, splits.py) is val, 1,437 train / 360 val.
"""
import torch
import torch.nn.functional as Fn

from .bundle import DataBundle
from .folder import TensorImages
from .splits import stratified_folds
from .transforms import digits_transforms

CLASSES = [str(d) for d in range(10)]
GLYPH = 0.7


def render(images, inpsize):
    """[N, 8, 8] values 0..16 -> uint8 [N, 1, S, S] canvases, S = max(inpsize, round(inpsize * 256 / 224)).

    Each digit gets a one-pixel zero border first (10x10), so the upsampled ink fades out instead of
    stopping at the edge of the 8x8 box. torch's bicubic upsampling is separable, so it is applied as
    A @ digit @ A.T with A taken from F.interpolate itself: the same values as interpolating every image,
    at a fraction of the cost.
    """
    side = max(inpsize, round(inpsize * 256 / 224))
    glyph = round(side * GLYPH * 10 / 8)   # the 8x8 digit spans GLYPH of the side, its border the rest
    offset = (side - glyph) // 2
    basis = torch.eye(10).view(10, 1, 10, 1)
    a = Fn.interpolate(basis, size=(glyph, 1), mode="bicubic", align_corners=False).view(10, glyph).T
    x = Fn.pad(torch.as_tensor(images, dtype=torch.float32) * (255.0 / 16.0), (1, 1, 1, 1))
    canvas = torch.zeros(len(x), 1, side, side, dtype=torch.uint8)
    for start in range(0, len(x), 256):  # bounded float memory at large inpsize
        up = (a @ x[start:start + 256] @ a.T).clamp_(0, 255).round_().to(torch.uint8)
        canvas[start:start + 256, 0, offset:offset + glyph, offset:offset + glyph] = up
    return canvas


def mean_std(images):
    """Mean and std of uint8 images scaled to [0, 1], from their histogram (no float copy of the images)."""
    counts = torch.bincount(images.reshape(-1), minlength=256).double()
    values = torch.arange(256, dtype=torch.float64) / 255
    mean = (counts * values).sum() / counts.sum()
    var = (counts * (values - mean) ** 2).sum() / counts.sum()
    return round(mean.item(), 4), round(var.sqrt().item(), 4)


def digits(inpsize, *, augment, ten_crop):
    """(train, val, classes, description) for the rendered digits."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = render(data.images, inpsize)
    labels = torch.as_tensor(data.target, dtype=torch.int64)
    folds = torch.as_tensor(stratified_folds([f"digit{i}" for i in range(len(labels))], labels.numpy(), 5))
    is_val = folds == 0
    train_images = images[~is_val]
    side = images.shape[-1]
    top = (side - inpsize) // 2
    mean, std = mean_std(train_images[:, :, top:top + inpsize, top:top + inpsize])
    mean, std = (mean,), (std,)
    train_tf, val_tf = digits_transforms(inpsize, mean, std, augment=augment, ten_crop=ten_crop)
    train = TensorImages(train_images, labels[~is_val].tolist(), CLASSES, train_tf)
    val = TensorImages(images[is_val], labels[is_val].tolist(), CLASSES, val_tf)
    return train, val, CLASSES, (f"digits (sklearn load_digits) {inpsize}x{inpsize}: "
                                 f"{len(train)} train / {len(val)} val")


def read_digits(name, data_dir, opts):
    """The digits DataBundle; needs no ``data_dir`` (the images come with scikit-learn)."""
    train, val, classes, description = digits(opts.inpsize, augment=opts.augment, ten_crop=opts.ten_crop)
    return DataBundle(train, val, len(classes), 1, classes, description)
