"""Published normalisation constants of the datasets firstlayer knows, in one place.

Per-channel mean and standard deviation of pixel values scaled to [0, 1], as the models trained
on them expect their input (``(x / 255 - mean) / std``).
"""

from __future__ import annotations

#: CIFAR-10 training set (50,000 images): mean and population std per channel (R, G, B).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
#: ImageNet (ILSVRC-2012), as torchvision's and timm's pretrained models expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
