"""Model registry, forward-ordered trainable layers, and the f_a / f_b split of Algorithm 1.

Every model created here takes images in [0, 1]: input normalisation is the first module of the
model, so attacks work in pixel space and eps means what the paper says.

Models from anywhere
--------------------
Besides the registry names (:data:`MODELS`), a model spec may be an import path
``package.module:factory``, called as ``factory(num_classes=, image_size=, in_channels=,
**model_kwargs)``, or ``timm:NAME``, built with ``timm.create_model(NAME, pretrained=False,
num_classes=, in_chans=, img_size=, **model_kwargs)`` (``img_size`` only where the model takes
it). Either is imported in the process that builds the model, so on a Ray cluster the module
must be importable on every worker. The returned network goes through the same
:class:`ImageClassifier` wrapper as a registry model. A factory declares its input
normalisation by giving the returned module ``mean`` and ``std`` attributes (per channel, in
[0, 1] pixel units); a timm model's ``pretrained_cfg`` mean/std count as declared. A model that
declares none is normalised with the statistics it is given (the training images') and a
one-line warning is logged once per process. ``robustbench:NAME`` (see :mod:`semirobust_ray.zoo`)
builds RobustBench's own definition of a published network, random weights; RobustBench's
networks take [0, 1] images and normalise inside, so no normalisation is added, and modules
its definitions keep only for loading checkpoints (never run in forward) are dropped.

Where a network is cut
----------------------
``split(model, fb_layers)`` makes f_b the last ``fb_layers`` trainable (Conv/Linear) layers in
*execution* order, and f_a every module that runs before the first of them. The order is traced
from a real forward pass, never taken from registration order. In torchvision's ResNet Bottleneck
the execution order inside a block is conv1, conv2, conv3, then the downsample conv; a cut inside
a block therefore freezes the block's modules that ran before the cut and trains the rest (the
residual addition has no parameters, so nothing is ambiguous). A BatchNorm belongs to the side of
the cut on which it runs.
"""

from __future__ import annotations

import contextlib
import logging
import re
import types
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
import torchvision
from torch import nn
from torch.overrides import TorchFunctionMode

from semirobust_ray import zoo
from semirobust_ray.names import did_you_mean
from semirobust_ray.specs import import_spec, module_fingerprint
from semirobust_ray.storage import first_line

TRAINABLE_TYPES = (nn.Conv2d, nn.Linear)

#: Image size at and below which the 32x32 (CIFAR) variant of a torchvision model is built.
SMALL_IMAGE_MAX = 64

#: Prefix of a model spec built by timm (``timm:resnet18``).
TIMM_PREFIX = "timm:"

# ``package.module:factory`` (the factory may be a dotted attribute path, ``mod:Class.build``).
_IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")

_log = logging.getLogger(__name__)
# Specs already warned about in this process: every trial builds its model several times.
_warned_normalisation: set[str] = set()


class ModelError(ValueError):
    """A model name, size or split depth that cannot be built; the message is one line."""


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` so that the model itself accepts [0, 1] images."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class ImageClassifier(nn.Module):
    """``net(normalize(x))`` for x in [0, 1], remembering the input shape it was built for."""

    def __init__(self, net: nn.Module, normalize: Normalize, input_shape: tuple[int, int, int]):
        super().__init__()
        self.normalize = normalize
        self.net = net
        self.input_shape = input_shape
        # Submodules removed because no forward pass runs them (see create_model).
        self.dropped: tuple[str, ...] = ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


ModelBuilder = Callable[[int, int, int], nn.Module]
MODELS: dict[str, ModelBuilder] = {}


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows of a model besides its builder (:func:`register_model`)."""

    layers: int  # trainable (Conv2d/Linear) layers at every image size: the split depths 1..n
    display: str  # how reports name it (VGG16)
    note: str = ""  # a few words for the help text


#: Each registered model's metadata, by name; the help text, the reports and the contract
#: tests (``tests/test_models.py``) read it.
MODEL_INFO: dict[str, ModelInfo] = {}


def register_model(
    name: str, *, layers: int, display: str | None = None, note: str = ""
) -> Callable[[ModelBuilder], ModelBuilder]:
    """Register ``builder(num_classes, image_size, in_channels) -> nn.Module`` under ``name``.

    ``layers`` is its number of trainable (Conv2d and Linear) layers, whatever the image size
    (the contract tests build it and count); ``display`` how reports name it (default:
    ``name``); ``note`` a few words for the config's help text.
    """
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        raise TypeError(f"layers must be an integer >= 1, got {layers!r}")

    def decorate(builder: ModelBuilder) -> ModelBuilder:
        if name in MODELS:
            raise ValueError(f"model {name!r} is already registered")
        MODELS[name] = builder
        MODEL_INFO[name] = ModelInfo(layers, display or name, note)
        return builder

    return decorate


def is_external(name: str) -> bool:
    """Whether ``name`` is a ``timm:``, ``robustbench:`` or import-path spec, not a registry name."""
    return name.startswith(TIMM_PREFIX) or zoo.is_zoo_ref(name) or bool(_IMPORT_PATH.match(name))


def model_spec_problem(name: str, what: str = "model") -> str | None:
    """Why ``name`` is not a valid model spec, or None; checks the form only, imports nothing.

    Config validation uses this, so a config naming a user's module validates in any process
    (a Ray worker re-validates it) whether or not the module has been imported there yet.
    ``what`` words the message: ``"value"`` after a config key, ``"model"`` on its own.
    """
    if name in MODELS:
        return None
    if name.startswith(TIMM_PREFIX):
        return (
            None if name[len(TIMM_PREFIX) :] else "'timm:' needs a model name, e.g. timm:resnet18"
        )
    if zoo.is_zoo_ref(name):
        try:
            zoo.parse_ref(name)
        except zoo.ZooError as err:
            return str(err)
        return None
    if _IMPORT_PATH.match(name):
        return None
    hint = did_you_mean(name, MODELS)
    valid = ", ".join([*sorted(MODELS), "timm:NAME", "robustbench:NAME", "package.module:factory"])
    return f"unknown {what} '{name}'{hint}; valid{' models' if what == 'model' else ''}: {valid}"


def model_slug(name: str) -> str:
    """``name`` with every character but letters, digits, ``_ . -`` replaced by ``_``: a spec
    such as ``timm:resnet18`` names directories (search and baseline-cache names)."""
    return re.sub(r"[^\w.-]", "_", name)


def _resolve_factory(name: str) -> Callable[..., object]:
    """Import the factory of a ``package.module:factory`` spec; one-line ModelError otherwise."""
    obj = import_spec(name, "model", "builds the model", ModelError, "see README, 'Your own model'")
    module_name, _, attr = name.partition(":")
    if not callable(obj):
        raise ModelError(f"model '{name}': '{attr}' in '{module_name}' is not callable")
    return obj


def external_code_fingerprint(name: str) -> str | None:
    """What identifies the code of a non-registry model, for the baseline cache key: timm's
    version for ``timm:``, a hash of the factory module's source file for an import path (so
    editing the factory invalidates cached baselines); None for a registry model, whose code is
    part of :mod:`semirobust_ray.models` and fingerprinted with it."""
    if not is_external(name):
        return None
    if name.startswith(TIMM_PREFIX):
        return f"timm-{import_timm().__version__}"
    if zoo.is_zoo_ref(name):
        return f"robustbench-{zoo.version()}"
    return module_fingerprint(name)


#: The one upstream warning :func:`import_timm` keeps out of the user's console: timm (1.0)
#: decorates a class with ``torch.jit.interface``, which torch 2.14 deprecates, so every process
#: that imports timm printed it; nothing in it is the user's to act on.
TIMM_IMPORT_WARNING = r"`torch\.jit\.interface` is deprecated"


def import_timm() -> types.ModuleType:
    """``import timm`` without timm's own ``torch.jit.interface`` FutureWarning.

    Only that message, only while timm is imported: every other warning (ours, torch's, timm's
    others) stays visible, and the filter is gone afterwards. Raises ImportError without timm.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=TIMM_IMPORT_WARNING, category=FutureWarning)
        import timm
    return timm


def _timm_net(
    arch: str, num_classes: int, image_size: int, in_channels: int, kwargs: dict
) -> nn.Module:
    try:
        timm = import_timm()
    except ImportError:
        raise ModelError(
            f"model 'timm:{arch}' needs timm: pip install \"semirobust_ray[timm]\""
        ) from None
    if not timm.is_model(arch):
        hint = did_you_mean(arch, timm.list_models(), prefix="timm:")
        raise ModelError(f"model 'timm:{arch}': timm has no model '{arch}'{hint}")
    args = {"pretrained": False, "num_classes": num_classes, "in_chans": in_channels, **kwargs}
    try:
        # Size-dependent models (ViTs: position embeddings) need img_size; the others (CNNs)
        # refuse the keyword, and timm offers no way to ask which a model is but trying.
        try:
            return timm.create_model(arch, **{"img_size": image_size, **args})
        except TypeError as err:
            if "img_size" not in str(err) or "img_size" in kwargs:
                raise
            return timm.create_model(arch, **args)
    except Exception as err:
        raise ModelError(
            f"model 'timm:{arch}': timm.create_model failed ({type(err).__name__}: "
            f"{first_line(err)})"
        ) from None


def _external_net(
    name: str, num_classes: int, image_size: int, in_channels: int, kwargs: dict
) -> nn.Module:
    """The bare network of a ``timm:`` or import-path spec, checked to be a usable module."""
    if name.startswith(TIMM_PREFIX):
        net = _timm_net(name[len(TIMM_PREFIX) :], num_classes, image_size, in_channels, kwargs)
    elif zoo.is_zoo_ref(name):
        net = _zoo_net(name, num_classes, kwargs)
    else:
        factory = _resolve_factory(name)
        try:
            net = factory(
                num_classes=num_classes, image_size=image_size, in_channels=in_channels, **kwargs
            )
        except Exception as err:
            raise ModelError(
                f"model '{name}': the factory raised {type(err).__name__}: {first_line(err)}"
            ) from None
    if not isinstance(net, nn.Module):
        raise ModelError(
            f"model '{name}': the factory returned {type(net).__name__}, not a torch.nn.Module"
        )
    if not any(isinstance(m, TRAINABLE_TYPES) for m in net.modules()):
        raise ModelError(
            f"model '{name}' has no Conv2d or Linear layer: there is nothing to split "
            "into f_a and f_b"
        )
    return net


def _zoo_net(name: str, num_classes: int, kwargs: dict) -> nn.Module:
    if kwargs:
        raise ModelError(f"model_kwargs {sorted(kwargs)}: '{name}' is RobustBench's fixed network")
    try:
        net = zoo.architecture(zoo.parse_ref(name))
    except zoo.ZooError as err:
        raise ModelError(f"model {err}") from None
    out = [m for m in net.modules() if isinstance(m, nn.Linear)]
    classes = out[-1].out_features if out else None
    if classes is not None and classes != num_classes:
        raise ModelError(
            f"model '{name}' classifies {classes} classes, the dataset has {num_classes}"
        )
    return net


def _drop_unused_modules(model: nn.Module, order: list[str]) -> tuple[str, ...]:
    """Remove submodules with state that a forward pass never runs (RobustBench's WRN
    definitions keep an unused ``sub_block1`` so that old checkpoints load); returns their
    names, whose checkpoint entries a loader may then skip."""
    ran = set(order)
    dropped: list[str] = []
    for name, module in list(model.named_modules()):
        if not name or not any(True for _ in module.parameters()):
            continue
        if any(child in ran for child, _ in module.named_modules(prefix=name)):
            continue
        if any(name.startswith(f"{gone}.") for gone in dropped):
            continue  # went with an unused parent
        parent_name, _, attr = name.rpartition(".")
        delattr(model.get_submodule(parent_name), attr)
        dropped.append(name)
    return tuple(dropped)


def _channels(name: str, what: str, value: object, in_channels: int) -> list[float]:
    """A declared per-channel mean or std as a list of ``in_channels`` floats."""
    try:
        values = torch.as_tensor(value, dtype=torch.float32).flatten().tolist()
    except (TypeError, ValueError, RuntimeError):
        raise ModelError(
            f"model '{name}': its {what} must be a list of per-channel numbers, got {value!r}"
        ) from None
    if len(values) == 1:
        values = values * in_channels
    if len(values) != in_channels:
        raise ModelError(
            f"model '{name}': its {what} has {len(values)} entries for {in_channels}-channel images"
        )
    return values


def declared_normalisation(
    name: str, net: nn.Module, in_channels: int
) -> tuple[list[float], list[float]] | None:
    """The (mean, std) a network declares for [0, 1] inputs, or None.

    The convention: ``mean`` and ``std`` attributes of the module the factory returns (per
    channel or one number, in [0, 1] pixel units), else the ``mean``/``std`` of a timm model's
    ``pretrained_cfg``. timm's values are for the architecture's 3-channel default; on images
    with another channel count they are ignored rather than guessed at.
    """
    mean, std = getattr(net, "mean", None), getattr(net, "std", None)
    if mean is not None and std is not None and not callable(mean) and not callable(std):
        return _channels(name, "mean", mean, in_channels), _channels(name, "std", std, in_channels)
    cfg = getattr(net, "pretrained_cfg", None)
    cfg = cfg if isinstance(cfg, Mapping) else {}
    cfg_mean, cfg_std = cfg.get("mean"), cfg.get("std")
    fits = cfg_mean is not None and cfg_std is not None
    if fits and len(cfg_mean) in (1, in_channels) and len(cfg_std) in (1, in_channels):
        return (
            _channels(name, "mean", cfg_mean, in_channels),
            _channels(name, "std", cfg_std, in_channels),
        )
    return None


def _first_conv(in_channels: int, out_channels: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, **kwargs)


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    """The 3x3 convolution block of the small CNNs (BatchNorm supplies the bias)."""
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def _pooled_head(channels: int, pool: int, hidden: int, num_classes: int) -> list[nn.Module]:
    """The small CNNs' classifier: pool to ``pool``x``pool``, then two linear layers.

    Adaptive pooling fixes the flattened size whatever the image size, so the same network runs
    on any image from 8x8 up.
    """
    return [
        nn.AdaptiveAvgPool2d(pool),
        nn.Flatten(),
        nn.Linear(channels * pool * pool, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    ]


@register_model("smallcnn", layers=6, display="SmallCNN")
def _smallcnn(num_classes: int, image_size: int, in_channels: int) -> nn.Module:
    """Six trainable layers (4 conv + 2 linear) with BatchNorm; fast on CPU, works from 8x8."""
    return nn.Sequential(
        *_conv_bn_relu(in_channels, 16),
        *_conv_bn_relu(16, 32),
        nn.MaxPool2d(2),
        *_conv_bn_relu(32, 64),
        *_conv_bn_relu(64, 64),
        *_pooled_head(64, pool=2, hidden=128, num_classes=num_classes),
    )


@register_model("smallvgg", layers=12, display="SmallVGG")
def _smallvgg(num_classes: int, image_size: int, in_channels: int) -> nn.Module:
    """Twelve trainable layers (10 conv + 2 linear) with BatchNorm, narrow enough for a CPU.

    For searches over many candidate depths on small images (works from 8x8).
    """
    widths = [16, 16, 32, 32, 32, 64, 64, 64, 64, 64]
    layers: list[nn.Module] = []
    cin = in_channels
    for i, cout in enumerate(widths):
        layers += _conv_bn_relu(cin, cout)
        if i in (1, 4):
            layers.append(nn.MaxPool2d(2))
        cin = cout
    return nn.Sequential(*layers, *_pooled_head(64, pool=1, hidden=64, num_classes=num_classes))


@register_model("alexnet", layers=8, display="AlexNet")
def _alexnet(num_classes: int, image_size: int, in_channels: int) -> nn.Module:
    """torchvision AlexNet (8 trainable layers); the 32x32 variant uses a 3x3 stride-2 stem."""
    model = torchvision.models.alexnet(num_classes=num_classes)
    if image_size <= SMALL_IMAGE_MAX:
        # 11x11 stride 4 followed by three max-pools leaves nothing of a 32x32 image.
        model.features[0] = _first_conv(in_channels, 64, kernel_size=3, stride=2, padding=1)
        model.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        model.classifier[1] = nn.Linear(256 * 2 * 2, 4096)
    elif in_channels != 3:
        model.features[0] = _first_conv(in_channels, 64, kernel_size=11, stride=4, padding=2)
    return model


@register_model("vgg16", layers=16, display="VGG16", note="BatchNorm")
def _vgg16(num_classes: int, image_size: int, in_channels: int) -> nn.Module:
    """torchvision VGG16 with BatchNorm (13 conv + 3 linear = 16 trainable layers).

    The 32x32 variant keeps the three-layer classifier at width 512, the usual CIFAR VGG head,
    instead of the 25088x4096 ImageNet head that would repeat one 1x1 feature map 49 times.
    """
    model = torchvision.models.vgg16_bn(num_classes=num_classes)
    if in_channels != 3:
        model.features[0] = _first_conv(in_channels, 64, kernel_size=3, padding=1)
    if image_size <= SMALL_IMAGE_MAX:
        model.avgpool = nn.AdaptiveAvgPool2d(1)
        model.classifier = nn.Sequential(
            nn.Linear(512, 512),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(512, 512),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(512, num_classes),
        )
    return model


@register_model("resnet50", layers=54, display="ResNet50")
def _resnet50(num_classes: int, image_size: int, in_channels: int) -> nn.Module:
    """torchvision ResNet50 (53 conv incl. 4 downsample + 1 linear = 54 trainable layers).

    The 32x32 variant uses a 3x3 stride-1 stem without max-pool, as in the CIFAR ResNets.
    """
    model = torchvision.models.resnet50(num_classes=num_classes)
    if image_size <= SMALL_IMAGE_MAX:
        model.conv1 = _first_conv(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = _first_conv(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def narrow(net: nn.Module, width: float) -> nn.Module:
    """Scale every hidden width of ``net`` by ``width`` (a uniform width multiplier).

    Each Conv2d/Linear/BatchNorm is rebuilt with ``round(c * width)`` channels for every hidden
    channel count c; the first layer's input (the image channels) and the last layer's output
    (the class scores) stay. Because the same c
    always maps to the same narrowed count, residual additions (ResNet) and flattened
    conv-to-linear joints (c channels x s spatial positions: the narrowed c times s, when
    ``c * width`` is whole) still line up; :func:`create_model` checks this with a forward pass.
    The depth and layer order, hence the split depths, are unchanged. Every other setting of a
    convolution (kernel, stride, padding, dilation, groups, bias, padding mode) is kept; a
    grouped convolution whose narrowed channels its groups no longer divide is a one-line
    :class:`ModelError` (a depthwise convolution, groups = channels, narrows with them).
    """
    layers = [m for m in net.modules() if isinstance(m, TRAINABLE_TYPES)]
    first, last = layers[0], layers[-1]
    for parent in list(net.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                new = _narrowed_conv(child, width, first=child is first)
            elif isinstance(child, nn.Linear):
                out = child.out_features
                new = nn.Linear(
                    _scaled(child.in_features, width),
                    out if child is last else _scaled(out, width),
                    child.bias is not None,
                )
            elif isinstance(child, nn.BatchNorm2d):
                new = nn.BatchNorm2d(_scaled(child.num_features, width))
            else:
                continue
            setattr(parent, name, new)
    return net


def _narrowed_conv(conv: nn.Conv2d, width: float, *, first: bool) -> nn.Conv2d:
    """``conv`` rebuilt with narrowed channels (its input too unless it is the ``first``)."""
    cin = conv.in_channels if first else _scaled(conv.in_channels, width)
    cout = _scaled(conv.out_channels, width)
    groups = conv.groups
    if groups > 1 and groups == conv.in_channels == conv.out_channels and not first:
        groups = cin  # depthwise stays depthwise
    if cin % groups or cout % groups:
        raise ModelError(
            f"width={width}: a Conv2d with groups={groups} cannot be narrowed from "
            f"{conv.in_channels}->{conv.out_channels} to {cin}->{cout} channels (groups must "
            "divide both); use another width"
        )
    return nn.Conv2d(
        cin,
        cout,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        groups,
        conv.bias is not None,
        conv.padding_mode,
    )


def create_model(
    name: str,
    num_classes: int,
    image_size: int,
    in_channels: int = 3,
    *,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    width: float = 1.0,
    model_kwargs: Mapping[str, object] | None = None,
) -> ImageClassifier:
    """Build model ``name`` for ``image_size``x``image_size`` inputs in [0, 1].

    ``name`` is a registry name, ``timm:NAME`` or ``package.module:factory`` (see the module
    docstring); ``model_kwargs`` go to the timm model or the factory. ``mean``/``std`` (per
    channel, in [0, 1] pixel units) become the model's first module; they default to 0.5 / 0.5.
    A timm or factory model's declared normalisation (:func:`declared_normalisation`) takes
    their place. ``width`` < 1 narrows every hidden layer of a registry model (see
    :func:`narrow`), for running the paper's architectures at reduced cost. Raises
    :class:`ModelError` for an unknown name, a module that cannot be imported, a factory that
    fails or returns no usable network, a bad width or an image too small for the architecture.
    """
    kwargs = _checked_model_options(name, num_classes, width, model_kwargs)
    if is_external(name):
        net = _external_net(name, num_classes, image_size, in_channels, kwargs)
        mean, std = _external_normalisation(name, net, in_channels, mean, std)
    else:
        net = MODELS[name](num_classes, image_size, in_channels)
        if width != 1:
            net = narrow(net, width)
    mean = list(mean) if mean is not None else [0.5] * in_channels
    std = list(std) if std is not None else [0.5] * in_channels
    model = ImageClassifier(net, Normalize(mean, std), (in_channels, image_size, image_size))
    order = _trace_new_model(model, name, width)
    if zoo.is_zoo_ref(name):
        model.dropped = _drop_unused_modules(model, order)
    return model


def _checked_model_options(
    name: str, num_classes: int, width: float, model_kwargs: Mapping[str, object] | None
) -> dict[str, object]:
    """Refuse a bad spec, class count, width or ``model_kwargs``; return the kwargs as a dict."""
    problem = model_spec_problem(name)
    if problem is not None:
        raise ModelError(problem)
    if num_classes < 2:
        raise ModelError(f"num_classes must be at least 2, got {num_classes}")
    if not 0 < width <= 1:
        raise ModelError(f"width must be in (0, 1], got {width}")
    kwargs = dict(model_kwargs or {})
    if is_external(name) and width != 1:
        raise ModelError(f"width={width}: only registry models can be narrowed, not '{name}'")
    if not is_external(name) and kwargs:
        raise ModelError(
            f"model_kwargs {sorted(kwargs)}: registry model '{name}' takes none; they are "
            "for timm:NAME and package.module:factory models"
        )
    return kwargs


def _external_normalisation(
    name: str,
    net: nn.Module,
    in_channels: int,
    mean: list[float] | None,
    std: list[float] | None,
) -> tuple[list[float] | None, list[float] | None]:
    """The (mean, std) a non-registry network is wrapped with: none for RobustBench's, else the
    declared one, else the caller's (warning once per spec that the network declared none)."""
    declared = declared_normalisation(name, net, in_channels)
    if zoo.is_zoo_ref(name):  # RobustBench networks normalise [0, 1] inputs themselves
        return [0.0] * in_channels, [1.0] * in_channels
    if declared is not None:
        return declared
    if name not in _warned_normalisation:
        _warned_normalisation.add(name)
        _log.warning(
            "model '%s' declares no input normalisation (mean/std attributes); "
            "normalising with the training images' per-channel statistics",
            name,
        )
    return mean, std


def _trace_new_model(model: ImageClassifier, name: str, width: float) -> list[str]:
    """The traced leaf order of a just-built model; a ModelError if it cannot run its input."""
    try:
        return _trace(model)
    # Any exception: a user's network may refuse a size with a ValueError or an assert.
    except Exception as err:
        in_channels, image_size, _ = model.input_shape
        at = f" at width {width}" if width != 1 else ""
        raise ModelError(
            f"model '{name}'{at} cannot run on {in_channels}x{image_size}x{image_size} images "
            f"({type(err).__name__}: {first_line(err)})"
        ) from None


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode inside the block; every submodule gets its own flag back.

    Restoring per module (not ``model.train(previous)``) keeps a mixed model mixed: a split
    network's f*_a stays in eval mode while its f_b is in train mode.
    """
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield model
    finally:
        for module, mode in modes:
            module.training = mode


class _FirstUse(TorchFunctionMode):
    """Records, for watched tensors, how many leaf modules had run when each was first used.

    Tensors held directly by a container module (a ViT's position embedding or class token)
    run in the container's own ``forward``, outside every leaf module, so leaf hooks cannot
    place them; every torch operation passes through this mode, which can.
    """

    def __init__(self, watched: dict[int, str], order: list[str]) -> None:
        super().__init__()
        self.watched, self.order = watched, order
        self.first_use: dict[str, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        # Reading an attribute (.shape, .dtype) is not a use in the computation.
        if getattr(func, "__name__", "") == "__get__":
            return func(*args, **kwargs)
        for value in _flatten((args, kwargs)):
            name = self.watched.get(id(value))
            if name is not None and name not in self.first_use:
                self.first_use[name] = len(self.order)
        return func(*args, **kwargs)


def _flatten(obj: object) -> Iterator[object]:
    """The leaves of nested tuples, lists and dicts (an operation's arguments)."""
    if isinstance(obj, tuple | list):
        for item in obj:
            yield from _flatten(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _flatten(item)
    else:
        yield obj


def _direct_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers held by container modules themselves, by state-dict key."""
    out: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if not any(True for _ in module.children()):
            continue  # a leaf: its state goes with it
        prefix = f"{name}." if name else ""
        for pname, p in module.named_parameters(recurse=False):
            out[prefix + pname] = p
        for bname, b in module.named_buffers(recurse=False):
            if b is not None:
                out[prefix + bname] = b
    return out


@dataclass(frozen=True)
class _Trace:
    """One forward pass, observed: leaf modules in first-call order, and where each tensor
    held directly by a container module was first used (the number of leaves run before it)."""

    order: list[str]
    direct_use: dict[str, int]


def _trace_forward(model: nn.Module) -> _Trace:
    """Run one example in eval mode without autograd and record the execution order.

    Every module's train/eval flag is restored, so BatchNorm statistics and modes are untouched.
    """
    order: list[str] = []
    seen: set[str] = set()
    handles = []
    for name, module in model.named_modules():
        if name and not any(True for _ in module.children()):

            def hook(_m: nn.Module, _i: object, _o: object, name: str = name) -> None:
                if name not in seen:
                    seen.add(name)
                    order.append(name)

            handles.append(module.register_forward_hook(hook))
    param = next(model.parameters())
    shape = getattr(model, "input_shape", None)
    if shape is None:
        raise ModelError("model has no input_shape; build it with create_model()")
    watched = {id(t): key for key, t in _direct_tensors(model).items()}
    recorder = _FirstUse(watched, order)
    example = torch.zeros((1, *shape), dtype=param.dtype, device=param.device)
    try:
        with eval_mode(model), torch.no_grad(), recorder:
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return _Trace(order, recorder.first_use)


def _trace(model: nn.Module) -> list[str]:
    """Names of the leaf modules, in the order a forward pass first calls them."""
    return _trace_forward(model).order


def trainable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The Conv2d and Linear modules of ``model`` in forward (execution) order, with names."""
    return _trainable_in_order(dict(model.named_modules()), _trace(model))


def _trainable_in_order(
    modules: dict[str, nn.Module], order: list[str]
) -> list[tuple[str, nn.Module]]:
    """The Conv2d and Linear modules among the traced leaves ``order``, in that order."""
    return [(name, modules[name]) for name in order if isinstance(modules[name], TRAINABLE_TYPES)]


def _force_eval(module: nn.Module, _inputs: object) -> None:
    # A forward pre-hook, so f*_a behaves as in eval mode (running BN statistics, Dropout an
    # identity) even after somebody calls model.train(): frozen must mean frozen.
    module.training = False


@dataclass
class Split:
    """The result of :func:`split`: which modules and tensors form f_a and f_b, and the hooks.

    ``fb_keys`` are the state-dict keys of f_b: every parameter and buffer of the stateful
    modules in ``fb_modules`` plus the tensors that container modules hold directly and that
    are first used after the cut (e.g. a ViT's position embedding at |f_b| = n).
    """

    model: nn.Module
    fb_layers: int
    num_layers: int
    fa_modules: list[str]
    fb_modules: list[str]
    layers: list[tuple[str, nn.Module]]
    fb_keys: frozenset[str] = frozenset()
    _handles: list = field(default_factory=list, repr=False)

    @property
    def split_index(self) -> int:
        """a, the number of trainable layers in f_a (paper numbering: f_a = layers 1..a)."""
        return self.num_layers - self.fb_layers

    def fb_parameters(self) -> list[nn.Parameter]:
        """The parameters adversarial f_b training updates."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def fb_subset(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The entries of a full state dict (e.g. the regular network's) that belong to f_b."""
        return {k: v for k, v in state.items() if k in self.fb_keys}

    def fb_state(self) -> dict[str, torch.Tensor]:
        """f_b's parameters and buffers only: what a trial checkpoints."""
        return {k: v.detach().clone() for k, v in self.fb_subset(self.model.state_dict()).items()}

    def load_fb_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load f_b weights saved by :meth:`fb_state`; keys outside f_b are refused."""
        if set(state) != self.fb_keys:
            raise ModelError(
                f"f_b state does not match this split (|f_b|={self.fb_layers}): "
                f"{len(set(state) ^ self.fb_keys)} keys differ"
            )
        self.model.load_state_dict(state, strict=False)

    def release(self) -> None:
        """Undo the freeze: remove the eval hooks and make every parameter trainable again."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for p in self.model.parameters():
            p.requires_grad_(True)


def _modules_before_cut(model: nn.Module, order: list[str], first_fb: int) -> list[str]:
    """Modules (leaves and containers) all of whose traced leaves run before ``order[first_fb]``."""
    position = {name: i for i, name in enumerate(order)}
    out = []
    for name, module in model.named_modules():
        if not name:
            continue
        ran = [position[c] for c, _ in module.named_modules(prefix=name) if c in position]
        if ran and max(ran) < first_fb:
            out.append(name)
    return out


def split(model: nn.Module, fb_layers: int) -> Split:
    """Freeze f_a in place and return the :class:`Split` with f_b = last ``fb_layers`` layers.

    f_a is everything that runs before f_b's first layer. Its parameters stop requiring
    gradients (those of its modules and those that container modules hold directly and use
    before the cut), and every module of it, parameter-free ones such as Dropout included,
    always runs in eval mode, so f*_a computes the same function whatever mode the model is put
    in and neither its weights nor its BatchNorm running statistics can change while f_b trains.
    ``fb_layers`` must lie in 1..n where n is the model's number of trainable layers
    (n makes f_a just the input normalisation).
    """
    traced = _trace_forward(model)
    order = traced.order
    modules = dict(model.named_modules())
    layers = _trainable_in_order(modules, order)
    n = len(layers)
    if isinstance(fb_layers, bool) or not isinstance(fb_layers, int) or not 1 <= fb_layers <= n:
        raise ModelError(f"split depth |f_b|={fb_layers!r} is out of range: valid 1..{n}")
    first_fb = order.index(layers[n - fb_layers][0])
    direct = _direct_tensors(model)
    _check_every_parameter_runs(model, traced, direct)
    # A tensor used when `first_fb` or fewer leaves had run is used before f_b's first layer.
    fa_direct = {k for k in direct if traced.direct_use.get(k, 0) <= first_fb}
    fa = [m for m in order[:first_fb] if _has_state(modules[m])]
    fb = [m for m in order[first_fb:] if _has_state(modules[m])]
    fb_keys = {k for m in fb for k in modules[m].state_dict(prefix=f"{m}.")}
    fb_keys |= set(direct) - fa_direct
    _freeze_fa(model, [modules[name] for name in order[:first_fb]], [direct[k] for k in fa_direct])
    # Every module whose whole forward lies before the cut runs in eval mode: leaves (Dropout
    # too, which has no state) and containers, whose own forward may also read self.training.
    handles = [
        modules[name].register_forward_pre_hook(_force_eval)
        for name in _modules_before_cut(model, order, first_fb)
    ]
    return Split(model, fb_layers, n, fa, fb, layers, frozenset(fb_keys), handles)


def _check_every_parameter_runs(
    model: nn.Module, traced: _Trace, direct: dict[str, torch.Tensor]
) -> None:
    """Refuse parameters the traced forward never used: neither f_a nor f_b can claim them."""
    untraced = [
        name
        for name, mod in model.named_modules()
        if name
        and name not in traced.order
        and not any(True for _ in mod.children())
        and any(True for _ in mod.parameters(recurse=False))
    ]
    if untraced:
        raise ModelError(f"modules with parameters never run in forward: {untraced[:3]}")
    unused = sorted(k for k, t in direct.items() if k not in traced.direct_use and t.requires_grad)
    if unused:
        raise ModelError(
            f"parameters held by container modules never used in forward: {unused[:3]}; "
            "f_a and f_b cannot be told apart for them"
        )


def _has_state(module: nn.Module) -> bool:
    """Whether ``module`` has parameters or buffers, i.e. entries in the state dict."""
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def _freeze_fa(model: nn.Module, fa_leaves: list[nn.Module], fa_direct: list[torch.Tensor]) -> None:
    """Stop gradients for f_a's leaves and the direct tensors it uses; everything else trains.

    Every parameter is made trainable first, so a model split before (at another depth) gets
    back what that split froze.
    """
    for p in model.parameters():
        p.requires_grad_(True)
    for leaf in fa_leaves:
        for p in leaf.parameters():
            p.requires_grad_(False)
    for tensor in fa_direct:
        tensor.requires_grad_(False)
