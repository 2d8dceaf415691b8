"""Model registry, forward-ordered layer counts, and what "frozen f*_a" has to mean.

The contract tests run over every registered model (:data:`MODEL_INFO`): a new model is held to
its declared layer count, to narrowing and to the freeze the moment it is registered.
"""

import pytest
import torch
from torch import nn

from semirobust_ray.models import (
    MODEL_INFO,
    ModelError,
    create_model,
    narrow,
    split,
    trainable_layers,
)

MODELS = list(MODEL_INFO)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize(("size", "channels"), [(32, 3), (32, 1), (96, 3)])
def test_contract_declared_layers_at_every_size(name, size, channels):
    """The declared number of trainable layers (the split depths 1..n) at CIFAR size, in
    grayscale and at the size where the torchvision networks keep their ImageNet stems; the
    classifier is last and its input is [0, 1] images."""
    model = create_model(name, 7, size, channels).eval()
    layers = trainable_layers(model)
    assert len(layers) == MODEL_INFO[name].layers
    assert all(isinstance(m, nn.Conv2d | nn.Linear) for _, m in layers)
    assert isinstance(layers[-1][1], nn.Linear) and layers[-1][1].out_features == 7
    with torch.no_grad():
        assert model(torch.rand(2, channels, size, size)).shape == (2, 7)
    assert MODEL_INFO[name].display


def _inputs(layer: nn.Module) -> int:
    return layer.in_channels if isinstance(layer, nn.Conv2d) else layer.in_features


@pytest.mark.parametrize("name", MODELS)
def test_contract_narrowing_keeps_depth_and_freezing_keeps_fa_bit_identical(name):
    full, narrowed = create_model(name, 10, 32), create_model(name, 10, 32, width=0.125)
    full_layers, narrow_layers = trainable_layers(full), trainable_layers(narrowed)
    # same depth and the same layer names, so split depths and checkpoints mean the same
    assert [n for n, _ in narrow_layers] == [n for n, _ in full_layers]
    # hidden widths scale by 1/8; the image channels and the class scores stay
    assert _inputs(narrow_layers[1][1]) * 8 == _inputs(full_layers[1][1])
    assert narrow_layers[0][1].in_channels == 3 and narrow_layers[-1][1].out_features == 10
    assert narrowed(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    n = MODEL_INFO[name].layers
    for depth in sorted({1, max(1, n - 1)}):
        s = split(narrowed, depth)
        fb_keys = set(s.fb_state())
        before = {k: v.clone() for k, v in narrowed.state_dict().items()}
        _train_steps(narrowed, s.fb_parameters(), steps=2, channels=3, size=32)
        after = narrowed.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before if k not in fb_keys)
        assert any(not torch.equal(before[k], after[k]) for k in fb_keys)
        s.release()


def test_resnet_layers_follow_execution_order_not_registration():
    layers = [n for n, _ in trainable_layers(create_model("resnet50", 10, 32))]
    block = [n for n in layers if n.startswith("net.layer1.0.")]
    # torchvision registers downsample last too, but conv3 must precede it because it runs first
    assert block == [f"net.layer1.0.{m}" for m in ("conv1", "conv2", "conv3", "downsample.0")]
    assert layers.index("net.layer1.0.downsample.0") < layers.index("net.layer1.1.conv1")


def test_models_take_unit_range_images_and_normalise_inside():
    model = create_model("smallcnn", 10, 8, 1, mean=[0.3], std=[0.2]).eval()
    x = torch.rand(4, 1, 8, 8)
    expected = model.net((x - 0.3) / 0.2)
    assert torch.allclose(model(x), expected)


def test_narrowing_keeps_grouped_and_depthwise_convolutions():
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.Conv2d(16, 16, 3, padding=2, dilation=2, groups=16, padding_mode="reflect"),  # depthwise
        nn.Conv2d(16, 32, 1, stride=2, groups=4, bias=False),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )
    narrow(net, 0.5)
    first, depthwise, grouped = net[0], net[1], net[2]
    assert (first.in_channels, first.out_channels) == (3, 8)
    assert (depthwise.in_channels, depthwise.out_channels, depthwise.groups) == (8, 8, 8)
    assert (depthwise.dilation, depthwise.padding, depthwise.padding_mode) == (
        (2, 2),
        (2, 2),
        "reflect",
    )
    assert (grouped.in_channels, grouped.out_channels, grouped.groups) == (8, 16, 4)
    assert grouped.stride == (2, 2) and grouped.bias is None
    assert net(torch.rand(2, 3, 16, 16)).shape == (2, 10)


def test_narrowing_a_grouped_convolution_its_groups_no_longer_divide_is_one_line():
    net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.Conv2d(16, 32, 1, groups=4), nn.Flatten())
    with pytest.raises(ModelError, match=r"^width=0.3: a Conv2d with groups=4 cannot be narrowed"):
        narrow(net, 0.3)  # 16 -> 5 channels


def test_bad_width_is_a_one_line_error():
    with pytest.raises(ModelError, match=r"width must be in \(0, 1\], got 1.5"):
        create_model("vgg16", 10, 32, width=1.5)


def test_bad_names_and_sizes_are_one_line_errors():
    with pytest.raises(ModelError, match=r"unknown model 'vgg'.*did you mean 'vgg16'"):
        create_model("vgg", 10, 32)
    with pytest.raises(ModelError, match=r"cannot run on 1x8x8"):
        create_model("vgg16", 10, 8, 1)


@pytest.mark.parametrize("depth", [0, -1, 7, 2.5, True])
def test_split_depth_out_of_range_states_valid_range(depth):
    model = create_model("smallcnn", 10, 8, 1)
    with pytest.raises(ModelError, match=r"valid 1\.\.6"):
        split(model, depth)


def _train_steps(model, params, steps=3, channels=1, size=8):
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
    model.train()
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.rand(16, channels, size, size, generator=gen)
        y = torch.randint(0, 10, (16,), generator=gen)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("depth", [1, 2, 5, 6])
def test_frozen_fa_is_bit_identical_and_fb_changes(depth):
    model = create_model("smallcnn", 10, 8, 1)
    s = split(model, depth)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fb_keys = set(s.fb_state())
    _train_steps(model, s.fb_parameters())
    after = model.state_dict()
    fa_keys = [k for k in before if k not in fb_keys]
    assert fa_keys, "f_a always holds at least the input normalisation"
    for k in fa_keys:  # parameters AND BatchNorm buffers, even though model.train() was called
        assert torch.equal(before[k], after[k]), k
    changed = [k for k in fb_keys if not torch.equal(before[k], after[k])]
    assert any(k.endswith("weight") for k in changed)


def test_split_cuts_resnet_block_in_execution_order():
    model = create_model("resnet50", 10, 32)
    # |f_b| = 2 in layer4.2: conv3 and fc; conv3's BatchNorm runs after conv3, so it is in f_b
    s = split(model, 2)
    assert s.fb_modules == ["net.layer4.2.conv3", "net.layer4.2.bn3", "net.fc"]
    assert "net.layer4.2.bn2" in s.fa_modules
    assert s.split_index == 52


def test_fb_state_round_trip_and_release():
    model = create_model("smallcnn", 10, 8, 1)
    s = split(model, 2)
    state = s.fb_state()
    assert set(state) == {"net.15.weight", "net.15.bias", "net.17.weight", "net.17.bias"}
    with pytest.raises(ModelError, match="does not match"):
        s.load_fb_state({**state, "net.0.weight": torch.zeros(1)})
    s.release()
    assert all(p.requires_grad for p in model.parameters())


def _input_of(layer: nn.Module, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    seen = []
    handle = layer.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0].clone()))
    try:
        model(x)
    finally:
        handle.remove()
    return seen[0]


@pytest.mark.parametrize("name", ["vgg16", "alexnet"])
def test_dropout_inside_fa_is_off_even_in_train_mode(name):
    # Both classifiers hold a Dropout before their second-to-last Linear: at |f_b| = 2 it lies in
    # f*_a, which must compute the same function in train mode as in eval mode. (VGG16's last
    # Dropout, after that Linear, is f_b's and still trains; AlexNet's f_b has none.)
    model = create_model(name, 10, 32, width=0.125)
    s = split(model, 2)
    first_fb = s.layers[-2][1]
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model.eval()
    reference = _input_of(first_fb, model, x)
    model.train()
    for _ in range(3):
        assert torch.equal(_input_of(first_fb, model, x), reference)
    assert torch.equal(model(x), model(x)) == (name == "alexnet")


class _TinyViT(nn.Module):
    """Patch embedding, then a position embedding the container itself holds (as in a ViT)."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, 8, 4, stride=4)  # 8x8 image -> 4 tokens of width 8
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, 4, 8))
        self.mlp = nn.Linear(8, 8)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2) + self.pos_embed
        return self.head(torch.relu(self.mlp(tokens)).mean(1))


def _tiny_vit(extra: nn.Parameter | None = None) -> nn.Module:
    from semirobust_ray.models import ImageClassifier, Normalize

    net = _TinyViT()
    if extra is not None:
        net.unused = extra
    return ImageClassifier(net, Normalize([0.5], [0.5]), (1, 8, 8))


def test_container_held_parameter_is_frozen_in_fa_and_trained_in_fb():
    torch.manual_seed(0)
    model = _tiny_vit()
    # |f_b| = 2: the embedding is added right after the patch conv, before f_b's first layer
    s = split(model, 2)
    assert "net.pos_embed" not in s.fb_state()
    assert not model.net.pos_embed.requires_grad
    before = model.net.pos_embed.detach().clone()
    _train_steps(model, s.fb_parameters())
    assert torch.equal(model.net.pos_embed, before)
    s.release()
    # |f_b| = 3: the patch conv is in f_b, so the embedding used after it is f_b's to train
    s = split(model, 3)
    assert "net.pos_embed" in s.fb_state()
    _train_steps(model, s.fb_parameters())
    assert not torch.equal(model.net.pos_embed, before)


def test_container_parameter_never_used_is_refused():
    model = _tiny_vit(extra=nn.Parameter(torch.zeros(3)))
    with pytest.raises(ModelError, match=r"never used in forward: \['net.unused'\]"):
        split(model, 1)
