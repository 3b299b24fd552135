"""Training comparison: the same model trained with ReLU, GELU and SUGAR variants.

    python -m benchmarks.train --quick --json out.json --out results/   # digits, small CNN
    python -m benchmarks.train --stress                  # dying-ReLU stress (negative bias init)
    python -m benchmarks.train --data cifar10 --data-dir ~/data --model vgg16 --paper --epochs 100

Every activation starts from the same weights for a given seed (the model is built with nn.ReLU,
then converted). Reported per activation, mean over seeds:

* test accuracy (and its std);
* dead units and sparsity: ``sugar_kernels.diagnostics.ActivationMonitor`` over the test set in
  eval mode, before training and after each epoch; a unit (a conv channel or a linear feature) is
  dead when its output was > 0 on no element of any test image;
* grad -> inactive: the share of the gradient (L1, w.r.t. the activations' inputs) reaching
  inactive elements (output <= 0) over the last epoch's steps; 0 for ReLU;
* saved bytes: what autograd saves for backward in one training step, the whole model's;
* step time: median of forward + backward + optimizer step, first steps and the last epoch (the
  gradient monitor runs there) left out, on whatever machine runs it.

Data never downloads unless ``--download``: CIFAR is read from torchvision's on-disk format,
``DATA_DIR/cifar-10-batches-py/`` or ``DATA_DIR/cifar-100-python/``. Models, built with nn.ReLU:
``cnn`` (3 convolutions of W/2W/4W channels, no batch norm, a 128-unit hidden linear layer),
``resnet18`` (torchvision's with the CIFAR stem), ``vgg16`` and ``vgg16_bn`` (configuration D,
global average pooling, a 512-512-classes head; pools below 1x1 dropped).
"""

from .cli import main

__all__ = ["main"]
