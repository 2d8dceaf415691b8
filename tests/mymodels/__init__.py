"""Model factories a user might write, imported by path (``mymodels:tiny_cnn``) in the tests.

A package, so that a test can ship it to Ray workers the way README tells users to:
``ray.init(runtime_env={"py_modules": [path_to_this_directory]})``.
"""

from __future__ import annotations

from torch import nn


def tiny_cnn(num_classes: int, image_size: int, in_channels: int, width: int = 8) -> nn.Module:
    """Two convs and a linear layer that declare their normalisation (``mean``/``std``)."""
    net = nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * width, num_classes),
    )
    # Declared per channel in [0, 1] pixel units; the wrapper normalises with these.
    net.mean = [0.25] * in_channels
    net.std = [0.5] * in_channels
    return net


def undeclared_cnn(num_classes: int, image_size: int, in_channels: int) -> nn.Module:
    """A network with no normalisation of its own: the dataset's statistics are used."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 4, 3),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, num_classes),
    )


def raising(num_classes: int, image_size: int, in_channels: int) -> nn.Module:
    """A factory that fails the way a typo in a user's code does."""
    raise KeyError(f"no variant for {image_size} px")


def not_a_module(num_classes: int, image_size: int, in_channels: int) -> object:
    """A factory that returns a config dict instead of a network."""
    return {"layers": 3}


def no_layers(num_classes: int, image_size: int, in_channels: int) -> nn.Module:
    """A network without a Conv2d or Linear layer: nothing to split."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
