"""The seed-003 reference in PyTorch for the tests and the benchmark: the seed's own code
(GraphPropagationLayer, ResNetGraphCaptioner, generate_caption, ../shared/seeds/003_*.txt) with its ResNet
built from a `transformers.ResNetConfig` (random weights, offline) instead of the hub."""

import contextlib

import numpy as np
import torch
import transformers
from PIL import Image
from torch import nn

from cxrjax.models import graph_captioner
from cxrjax.weights import seed003


TINY_RESNET = dict(embedding_size=16, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1])
TINY_DECODER = dict(vocab_size=120, embed_dim=32, num_layers=2, num_heads=4)
CLS, SEP = 101, 102  # bert-base-uncased's, which the seed's generate_caption starts and stops with.


# The seed's code (../shared/seeds/003_*.txt), the ResNet built from a config instead of the hub.


class GraphPropagationLayer(nn.Module):
  def __init__(self, embed_dim, window_size=3, max_steps=3):
    super().__init__()
    self.window_size = window_size
    self.max_steps = max_steps
    self.msg_linear = nn.Linear(embed_dim, embed_dim)
    self.activation = nn.Hardtanh()

  def forward(self, x):
    B, L, D = x.shape
    pad = self.window_size // 2
    for _ in range(self.max_steps):
      neighbors = []
      for i in range(-pad, pad + 1):
        neighbors.append(torch.roll(x, shifts=i, dims=1))
      stacked = torch.stack(neighbors, dim=2)
      aggregated = stacked.mean(dim=2)
      messages = self.msg_linear(aggregated)
      x = self.activation(x + messages)
    return x


class ResNetGraphCaptioner(nn.Module):
  def __init__(self, vocab_size, embed_dim, num_layers, num_heads, resnet_config):
    super().__init__()
    self.encoder = transformers.ResNetModel(resnet_config)
    self.encoder.config.pooling = None
    encoder_dim = self.encoder.config.hidden_sizes[-1]

    self.vis_proj = nn.Linear(encoder_dim, embed_dim)
    self.graph_layer = GraphPropagationLayer(embed_dim, window_size=3, max_steps=3)

    self.embedding = nn.Embedding(vocab_size, embed_dim)
    self.pos_encoder = nn.Parameter(torch.randn(1, 2000, embed_dim))

    decoder_layer = nn.TransformerDecoderLayer(
      d_model=embed_dim, nhead=num_heads, dim_feedforward=1024, batch_first=True
    )
    self.decoder = nn.TransformerDecoder(decoder_layer, num_layers=num_layers)
    self.fc_out = nn.Linear(embed_dim, vocab_size)

  def forward(self, images, captions):
    outputs = self.encoder(pixel_values=images)
    B, C, H, W = outputs.last_hidden_state.shape
    visual_features = outputs.last_hidden_state.permute(0, 2, 3, 1).reshape(B, H * W, C)
    visual_tokens = self.vis_proj(visual_features)
    memory = self.graph_layer(visual_tokens)

    caption_emb = self.embedding(captions)
    seq_len = caption_emb.size(1)
    caption_emb = caption_emb + self.pos_encoder[:, :seq_len, :]

    tgt_mask = torch.triu(torch.ones((seq_len, seq_len)) * float("-inf"), diagonal=1).to(images.device)
    output = self.decoder(tgt=caption_emb, memory=memory, tgt_mask=tgt_mask)
    return self.fc_out(output)


def generate_caption(img_tensor, model, max_len=80):
  """The seed's inference loop from its preprocessed image tensor [1, 3, 224, 224]; also returns each
  generated token's log-probability (the end token's included when generation stops at it)."""
  input_ids, log_probs = [CLS], []
  with torch.no_grad():
    for _ in range(max_len):
      tensor_input = torch.tensor([input_ids])
      outputs = model(img_tensor, tensor_input)
      next_token = outputs[0, -1, :].argmax().item()
      log_probs.append(torch.log_softmax(outputs[0, -1, :], dim=-1)[next_token].item())
      if next_token == SEP:
        break
      input_ids.append(next_token)
  return input_ids[1:], log_probs


# Helpers.


@contextlib.contextmanager
def encoder_runs_once(model: ResNetGraphCaptioner):
  """Within: the model's ResNet computes each image tensor once. generate_caption feeds the same tensor at
  every step and recomputes the same features each time; this keeps its loop, 80 steps of the whole model,
  fast enough for the tests without touching the code under comparison."""
  forward, computed = model.encoder.forward, {}

  def once(pixel_values, **kwargs):
    if id(pixel_values) not in computed:  # The tensor is kept with its output, so its id is not reused.
      computed[id(pixel_values)] = (pixel_values, forward(pixel_values=pixel_values, **kwargs))
    return computed[id(pixel_values)][1]

  model.encoder.forward = once
  try:
    yield model
  finally:
    del model.encoder.forward  # The class's forward again.


def seed_transform(path) -> np.ndarray:
  """The seed's torchvision transform (Resize((224, 224)) of the PIL image, ToTensor, ImageNet Normalize) in
  PIL and numpy (torchvision does not install beside this torch build), channels last: [224, 224, 3]."""
  image = Image.open(path).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR)
  pixels = np.asarray(image, np.float32) / 255.0
  return ((pixels - np.float32([0.485, 0.456, 0.406])) / np.float32([0.229, 0.224, 0.225])).astype(np.float32)


def calibrate_batch_norm(model: transformers.ResNetModel, images: torch.Tensor, seed: int = 0) -> None:
  """Batch-norm statistics from `images` (one cumulative pass in train mode), then randomised (scale, shift,
  mean and variance perturbed): random weights keep activations O(1) over ResNet-50 this way, and every
  statistic still differs from the identity, so a mixed-up mean and variance shows."""
  generator = torch.Generator().manual_seed(seed)
  norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
  for norm in norms:
    norm.momentum = None
  model.train()
  with torch.no_grad():
    model(pixel_values=images)
    for norm in norms:
      size = norm.num_features
      norm.weight.copy_(torch.empty(size).uniform_(0.5, 1.5, generator=generator))
      norm.bias.copy_(torch.empty(size).normal_(0.0, 0.1, generator=generator))
      norm.running_mean.add_(torch.empty(size).normal_(0.0, 0.1, generator=generator) * norm.running_var.sqrt())
      norm.running_var.mul_(torch.empty(size).uniform_(0.7, 1.4, generator=generator))
  model.eval()


def reference_model(
  images: np.ndarray,
  resnet_config: dict,
  vocab_size: int,
  embed_dim: int,
  num_layers: int,
  num_heads: int,
  head_scale: float = 1.0,
  seed: int = 0,
) -> ResNetGraphCaptioner:
  torch.manual_seed(seed)
  model = ResNetGraphCaptioner(vocab_size, embed_dim, num_layers, num_heads, transformers.ResNetConfig(**resnet_config))
  calibrate_batch_norm(model.encoder, torch.from_numpy(images.transpose(0, 3, 1, 2)), seed)
  with torch.no_grad():
    model.fc_out.weight.mul_(head_scale)  # Large logit gaps: greedy choices far from ties.
  return model.eval()


def flax_model(path, num_heads):
  variables, model_config, vocab_size = seed003.import_seed003(path, num_heads=num_heads)
  model = graph_captioner.GraphCaptioner.from_config(model_config, vocab_size, lambda module_path: False)
  return model, variables


def token_rows(vocab_size: int, batch: int, length: int, seed: int = 0) -> np.ndarray:
  rows = np.random.default_rng(seed).integers(103, vocab_size, size=(batch, length))
  rows[:, 0] = CLS
  return rows
