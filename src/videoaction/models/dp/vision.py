"""Diffusion Policy's image encoder, written without torchvision: ResNet-18 with GroupNorm + spatial softmax.

Layout and parameter names follow torchvision's ``resnet18`` (``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
``layerN.0.downsample.{0,1}``) with every BatchNorm replaced by ``GroupNorm(channels // 16, channels)`` as Diffusion
Policy does (EMA breaks BatchNorm statistics); the average pool and ``fc`` are dropped. At full width the trunk has
11,176,512 parameters (ResNet-18's 11,689,512 minus the 513,000 of ``fc``). The head is robomimic's
``SpatialSoftmax``: a 1x1 conv to K keypoint maps, a softmax over each map, the expected (x, y) in [-1, 1] of each,
then a linear layer to the feature size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int, group_size: int = 16) -> nn.GroupNorm:
    """GroupNorm with ``channels // group_size`` groups (at least 1, lowered until it divides ``channels``)."""
    groups = max(1, channels // group_size)
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs with GroupNorm, identity or 1x1-conv shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, group_size: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = group_norm(out_ch, group_size)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = group_norm(out_ch, group_size)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), group_norm(out_ch, group_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class ResNet18GN(nn.Module):
    """ResNet-18 trunk (no pool, no fc) with GroupNorm: (N, 3, H, W) -> (N, 8w, H/32, W/32)."""

    def __init__(self, width: int = 64, group_size: int = 16, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.bn1 = group_norm(width, group_size)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        chans = [width, width * 2, width * 4, width * 8]
        in_ch = width
        for i, ch in enumerate(chans):
            stride = 1 if i == 0 else 2
            layer = nn.Sequential(BasicBlock(in_ch, ch, stride, group_size), BasicBlock(ch, ch, 1, group_size))
            self.add_module(f"layer{i + 1}", layer)
            in_ch = ch
        self.out_channels = in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))  # (N, w, H/4, W/4)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (N, 8w, H/32, W/32)


class SpatialSoftmax(nn.Module):
    """Keypoints as softmax-weighted mean positions: (N, C, H, W) -> (N, K, 2) with (x, y) in [-1, 1].

    With ``num_keypoints=None`` the C input maps are the keypoint maps (no 1x1 projection).
    """

    def __init__(self, in_channels: int, num_keypoints: int | None = 32, temperature: float = 1.0,
                 learnable_temperature: bool = False):
        super().__init__()
        self.nets = nn.Conv2d(in_channels, num_keypoints, 1) if num_keypoints else None
        self.num_keypoints = num_keypoints or in_channels
        temp = torch.tensor([float(temperature)])
        if learnable_temperature:
            self.temperature = nn.Parameter(temp)
        else:
            self.register_buffer("temperature", temp, persistent=False)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        if self.nets is not None:
            feature = self.nets(feature)
        n, k, h, w = feature.shape
        # pixel centres on a [-1, 1] grid (robomimic: linspace over the map, x along width, y along height)
        xs = torch.linspace(-1.0, 1.0, w, device=feature.device, dtype=feature.dtype)
        ys = torch.linspace(-1.0, 1.0, h, device=feature.device, dtype=feature.dtype)
        attn = torch.softmax(feature.reshape(n, k, h * w) / self.temperature.to(feature.dtype), dim=-1)
        attn = attn.reshape(n, k, h, w)
        ex = (attn.sum(dim=2) * xs).sum(-1)  # (N, K): marginal over rows, weighted columns
        ey = (attn.sum(dim=3) * ys).sum(-1)  # (N, K)
        return torch.stack([ex, ey], dim=-1)  # (N, K, 2)


class ImageEncoder(nn.Module):
    """ResNet-18-GN -> spatial softmax -> flatten -> linear: (N, 3, S, S) in [-1, 1] -> (N, feature_dim)."""

    def __init__(self, width: int = 64, group_size: int = 16, num_keypoints: int = 32, feature_dim: int = 64):
        super().__init__()
        self.backbone = ResNet18GN(width, group_size)
        self.pool = SpatialSoftmax(self.backbone.out_channels, num_keypoints)
        self.proj = nn.Linear(2 * self.pool.num_keypoints, feature_dim)
        self.feature_dim = feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kp = self.pool(self.backbone(x))  # (N, K, 2)
        return self.proj(kp.flatten(1))  # (N, feature_dim)
