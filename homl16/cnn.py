"""A small convolutional network: the inductive-bias baseline and the teacher for distillation."""

from torch import nn

from homl16.checks import check_images, check_positive


def conv_block(in_channels, out_channels):
    """3x3 conv, batch norm, ReLU, then 2x2 max-pool: (B, C_in, H, W) -> (B, C_out, H/2, W/2)."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(), nn.MaxPool2d(2))


class SmallCNN(nn.Module):
    """Three conv blocks, global average pooling and a linear head: (B, C, H, W) -> (B, num_classes)."""

    def __init__(self, in_channels=3, num_classes=10, width=32):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("num_classes", num_classes), ("width", width)):
            check_positive(name, value, integer=True)
        self.in_channels = in_channels
        self.features = nn.Sequential(conv_block(in_channels, width), conv_block(width, 2 * width),
                                      conv_block(2 * width, 4 * width))
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, X):
        check_images("X", X, self.in_channels)
        if min(X.shape[2:]) < 8:
            raise ValueError(f"X must be at least 8x8 pixels (three 2x2 poolings), "
                             f"got {X.shape[2]}x{X.shape[3]}")
        return self.head(self.features(X).mean(dim=(2, 3)))
