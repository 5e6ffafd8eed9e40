"""ResNet-18 (He et al., CVPR 2016) with the usual small-image stem.

torchvision's ``resnet18`` downsamples 4x in its stem (7x7 stride-2 conv, then max-pool),
which leaves 1x1 feature maps at 28-32 pixels; CIFAR-style ResNets instead use a 3x3
stride-1 conv and no pooling, keeping the stem at full resolution.
"""

from __future__ import annotations

from torch import nn

from genlr.models.compat import image_shape
from genlr.tasks.base import Task


def resnet18(task: Task, *, zero_init_residual: bool = False) -> nn.Module:
    """Options:
        zero_init_residual: start each residual branch's last BatchNorm at zero (Goyal et
            al., 2017), so every block begins as the identity.
    """
    import torchvision  # here, not at the top: importing it takes seconds

    channels, _, _ = image_shape(task, "resnet18")
    model = torchvision.models.resnet18(num_classes=task.num_outputs, zero_init_residual=zero_init_residual)
    model.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision's own convs
    model.maxpool = nn.Identity()
    return model
