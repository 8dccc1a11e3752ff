"""Per-dataset transforms (torchvision transforms v2 on uint8 tensors) and ten-crop helpers.

The sketch pipelines follow the original DAB code's datasets/load_data.py.
Every transform here runs on the uint8 tensor that Decode or the cache produced: the shorter side is
already resized to 256 and, for sketches, the image already inverted (ink high, background 0).

Deviations from the original, all deliberate:
- Rotation happens after the inversion and fills with 0, so rotated-in corners are background; the
  original rotated the white-background PIL image with a black fill, and its inversion turned the corners
  into ink.
- Rotation is bilinear (torchvision has no bicubic rotate for tensors; the original used PIL bicubic), and
  the original's same-size ANTIALIAS resize after it, a no-op, is dropped.
- RandomResizedCrop is torchvision's current one: aspect ratio drawn log-uniformly (old RandomSizedCrop:
  uniformly), crop resized with antialiased bilinear on the tensor instead of PIL bilinear.
- Ten-crop takes torchvision's TenCrop order (4 corners + centre, then the same on the mirror image;
  the original started with the centre) and never round-trips through PIL, so there is no float -> uint8
  truncation; the order does not matter because the ten outputs are averaged.
- The crop size is `inpsize` for every dataset (the original's ImageNet loader hard-coded 224), and the
  shorter side is resized to max(256, inpsize) so a centre crop always fits.
- CIFAR-10 trains with the standard random crop (padding inpsize/8) and flip that the original used only for
  CIFAR-100; the original's CIFAR-10 loader had no augmentation at all.
"""
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

SKETCH_NORM = {"tuberlin": ((0.06,), (0.93,)), "sketchyrecognition": ((0.0465,), (0.9,))}
CIFAR_NORM = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)),
              "cifar100": ((129.3 / 255, 124.1 / 255, 112.4 / 255), (68.2 / 255, 65.4 / 255, 70.4 / 255))}
IMAGENET_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def resize_for(inpsize):
    """Shorter side before cropping: the original's 256, or inpsize when that is larger."""
    return max(256, inpsize)


class RandomIntRotation(v2.Transform):
    """Rotate by an integer angle drawn uniformly from {-degrees, ..., degrees} (the original's RandomRotate),
    on the same canvas. Rotated-in corners are 0, the background of an inverted sketch: torchvision's
    fill=None pads with zeros, at half the cost of an explicit fill (which resamples an extra mask channel)."""

    def __init__(self, degrees=10, interpolation=v2.InterpolationMode.BILINEAR):
        super().__init__()
        self.degrees, self.interpolation = degrees, interpolation

    def make_params(self, flat_inputs):
        return {"angle": int(torch.randint(-self.degrees, self.degrees + 1, ()))}

    def transform(self, inpt, params):
        return self._call_kernel(F.rotate, inpt, angle=params["angle"], interpolation=self.interpolation, fill=None)


class StackCrops:
    """Tuple of crops -> one [ncrops, C, H, W] tensor, so the rest of the pipeline runs once on all crops."""

    def __call__(self, crops):
        return torch.stack(crops)


def to_float(mean, std):
    """uint8 -> float in [0, 1] -> normalized; works on [C, H, W] and on stacked crops [N, C, H, W]."""
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


def eval_transform(inpsize, mean, std, *, ten_crop, prefix=()):
    """Centre crop, or the ten crops stacked as [10, C, inpsize, inpsize] (crops are views; one normalize)."""
    crop = [v2.TenCrop(inpsize), StackCrops()] if ten_crop else [v2.CenterCrop(inpsize)]
    return v2.Compose([*prefix, *crop, *to_float(mean, std)])


def sketch_transforms(name, inpsize, *, augment, ten_crop):
    """(train, val) for tuberlin / sketchyrecognition; Sketchy has no flip, as in the original."""
    mean, std = SKETCH_NORM[name]
    val = eval_transform(inpsize, mean, std, ten_crop=ten_crop)
    if not augment:
        return eval_transform(inpsize, mean, std, ten_crop=False), val
    flip = [v2.RandomHorizontalFlip()] if name == "tuberlin" else []
    to_unit, normalize = to_float(mean, std)   # rotate in float: cheaper, and no second rounding to uint8
    train = v2.Compose([v2.RandomResizedCrop(inpsize, antialias=True), *flip, to_unit, RandomIntRotation(10),
                        normalize])
    return train, val


def imagenet_transforms(inpsize, mean, std, *, augment, ten_crop):
    """(train, val): random resized crop + flip; val takes the centre (or ten) crop(s) of the 256 image."""
    val = eval_transform(inpsize, mean, std, ten_crop=ten_crop)
    if not augment:
        return eval_transform(inpsize, mean, std, ten_crop=False), val
    train = v2.Compose([v2.RandomResizedCrop(inpsize, antialias=True), v2.RandomHorizontalFlip(),
                        *to_float(mean, std)])
    return train, val


def cifar_transforms(name, inpsize, *, augment, ten_crop, norm=None):
    """(train, val) on torchvision's CIFAR PIL images; at inpsize 32 ten-crop reduces to image + mirror.
    ``norm``: (mean, std) instead of the dataset's own."""
    mean, std = norm or CIFAR_NORM[name]
    prefix = [v2.ToImage()] + ([v2.Resize(inpsize, antialias=True)] if inpsize != 32 else [])
    val = eval_transform(inpsize, mean, std, ten_crop=ten_crop, prefix=prefix)
    if not augment:
        return eval_transform(inpsize, mean, std, ten_crop=False, prefix=prefix), val
    train = v2.Compose([*prefix, v2.RandomCrop(inpsize, padding=max(1, inpsize // 8)), v2.RandomHorizontalFlip(),
                        *to_float(mean, std)])
    return train, val


def digits_transforms(inpsize, mean, std, *, augment, ten_crop):
    """(train, val) for the rendered digits: a light random resized crop and integer rotation, no flip."""
    val = eval_transform(inpsize, mean, std, ten_crop=ten_crop)
    if not augment:
        return eval_transform(inpsize, mean, std, ten_crop=False), val
    to_unit, normalize = to_float(mean, std)
    train = v2.Compose([v2.RandomResizedCrop(inpsize, scale=(0.6, 1.0), ratio=(0.9, 1.1), antialias=True),
                        to_unit, RandomIntRotation(10), normalize])
    return train, val


def average_crops(output, ncrops):
    """[B * ncrops, K] -> [B, K]: mean over each image's crops.

    Our models output log-probabilities, so this is the mean of log-probabilities, exactly what the
    original's Validator did (a geometric mean of the probabilities, not renormalised).
    """
    if output.shape[0] % ncrops:
        raise ValueError(f"output has {output.shape[0]} rows, not a multiple of ncrops={ncrops}")
    return output.reshape(-1, ncrops, *output.shape[1:]).mean(dim=1)
