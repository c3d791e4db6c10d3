"""A PyTorch DenseNet with torchvision's module names, the reference for the torch importer's parity test.

torchvision cannot be installed beside the CPU torch build here, so the tests build the same network from
torch.nn: `features.{conv0,norm0,relu0,pool0,denseblockN.denselayerM.{norm1,relu1,conv1,norm2,relu2,conv2},
transitionN.{norm,relu,conv,pool},norm5}` and `classifier`, exactly torchvision's `densenet121` layout.
"""

import collections

import torch
from torch import nn


class _DenseLayer(nn.Module):
  def __init__(self, in_features, growth_rate, bn_size):
    super().__init__()
    self.norm1 = nn.BatchNorm2d(in_features)
    self.relu1 = nn.ReLU()
    self.conv1 = nn.Conv2d(in_features, bn_size * growth_rate, 1, bias=False)
    self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
    self.relu2 = nn.ReLU()
    self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)

  def forward(self, x):
    y = self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))
    return torch.cat([x, y], 1)


class TorchDenseNet(nn.Module):
  def __init__(self, block_sizes=(6, 12, 24, 16), growth_rate=32, bn_size=4, stem_features=64, num_classes=14):
    super().__init__()
    layers = [
      ("conv0", nn.Conv2d(3, stem_features, 7, stride=2, padding=3, bias=False)),
      ("norm0", nn.BatchNorm2d(stem_features)),
      ("relu0", nn.ReLU()),
      ("pool0", nn.MaxPool2d(3, stride=2, padding=1)),
    ]
    channels = stem_features
    for index, size in enumerate(block_sizes, start=1):
      block = nn.Sequential(
        collections.OrderedDict(
          (f"denselayer{i + 1}", _DenseLayer(channels + i * growth_rate, growth_rate, bn_size)) for i in range(size)
        )
      )
      layers.append((f"denseblock{index}", block))
      channels += size * growth_rate
      if index != len(block_sizes):
        layers.append(
          (
            f"transition{index}",
            nn.Sequential(
              collections.OrderedDict(
                [
                  ("norm", nn.BatchNorm2d(channels)),
                  ("relu", nn.ReLU()),
                  ("conv", nn.Conv2d(channels, channels // 2, 1, bias=False)),
                  ("pool", nn.AvgPool2d(2, stride=2)),
                ]
              )
            ),
          )
        )
        channels //= 2
    layers.append(("norm5", nn.BatchNorm2d(channels)))
    self.features = nn.Sequential(collections.OrderedDict(layers))
    self.classifier = nn.Linear(channels, num_classes)

  def forward(self, images_nchw):
    """Returns (pooled [B, C], logits [B, classes])."""
    features = torch.relu(self.features(images_nchw))
    pooled = features.mean(dim=(2, 3))
    return pooled, self.classifier(pooled)


def randomize_(model: nn.Module, seed: int) -> None:
  """Random batch-norm statistics and affine parameters, so that parity covers every tensor."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, nn.BatchNorm2d):
        n = module.num_features
        module.weight.copy_(0.5 + torch.rand(n, generator=generator))
        module.bias.copy_(0.2 * torch.randn(n, generator=generator))
        module.running_mean.copy_(0.2 * torch.randn(n, generator=generator))
        module.running_var.copy_(0.5 + torch.rand(n, generator=generator))


def chexnet_checkpoint(model: TorchDenseNet) -> dict:
  """The layout of CheXNet's `model.pth.tar` (arnoweng/CheXNet): DataParallel + `densenet121.` wrapper,
  old-style `norm.1` names, `classifier.0` (Linear inside Sequential(Linear, Sigmoid))."""
  state = {}
  for name, tensor in model.state_dict().items():
    name = name.replace("classifier.", "classifier.0.")
    for part in ("norm", "relu", "conv"):
      for index in ("1", "2"):
        name = name.replace(f".{part}{index}.", f".{part}.{index}.")
    state[f"module.densenet121.{name}"] = tensor
  return {"epoch": 100, "arch": "densenet121", "state_dict": state, "best_loss": 0.5}
