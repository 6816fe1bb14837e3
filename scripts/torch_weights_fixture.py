"""Writes the PyTorch reference that dp-core's weights-by-name test loads
(crates/dp-core/tests/data/torch_cnn.safetensors).

A small CNN is built and initialised by PyTorch; the file holds its state_dict under
nn.Sequential's names ("0.weight", "3.bias", ...) in PyTorch's layouts, plus, under "io.*",
a batch of inputs `[B, C, H, W]`, labels, PyTorch's logits and each example's gradient norm of
the cross-entropy loss from torch.func (vmap of grad). The test loads the weights into the
equivalent dp-core model and must reproduce the logits and the per-example norms.

    python3 scripts/torch_weights_fixture.py crates/dp-core/tests/data/torch_cnn.safetensors

Needs torch and safetensors (pip install torch safetensors).
"""
import sys

import torch
from safetensors.torch import save_file
from torch import nn
from torch.func import functional_call, grad, vmap

torch.manual_seed(0)
model = nn.Sequential(
    nn.Conv2d(2, 4, 3, padding=1),  # 0
    nn.ReLU(),  # 1
    nn.MaxPool2d(2),  # 2
    nn.Conv2d(4, 8, 3, groups=2),  # 3
    nn.GroupNorm(2, 8),  # 4
    nn.ReLU(),  # 5
    nn.Flatten(),  # 6: (c, h, w) order
    nn.Linear(8 * 4 * 4, 10),  # 7
    nn.ReLU(),  # 8
    nn.Linear(10, 3),  # 9
)
# Non-trivial GroupNorm affine parameters, so that their layout is exercised too.
with torch.no_grad():
    model[4].weight.uniform_(0.5, 1.5)
    model[4].bias.uniform_(-0.5, 0.5)
x = torch.randn(5, 2, 12, 12)
y = torch.tensor([0, 1, 2, 1, 0])
logits = model(x)
params = {k: v.detach() for k, v in model.named_parameters()}


def loss(p, xi, yi):
    out = functional_call(model, p, (xi.unsqueeze(0),))
    return nn.functional.cross_entropy(out, yi.unsqueeze(0))


g = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
norms = torch.sqrt(sum(t.flatten(1).pow(2).sum(1) for t in g.values()))
tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
tensors["io.x"] = x
tensors["io.y"] = y.to(torch.float32)
tensors["io.logits"] = logits.detach()
tensors["io.norms"] = norms.detach()
save_file(tensors, sys.argv[1])
print({k: list(v.shape) for k, v in tensors.items()})
