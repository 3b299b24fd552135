"""Training comparison: the same model trained with ReLU, GELU and SUGAR variants.

    python -m benchmarks.train                    # digits (bundled with scikit-learn), small CNN
    python -m benchmarks.train --quick --json out.json --out results/
    python -m benchmarks.train --data cifar10 --data-dir ~/data --model vgg16 --paper --epochs 100
    python -m benchmarks.train --stress               # dying-ReLU stress (negative bias init)

Every activation trains from the same initial weights for a given seed (the model is built with
``nn.ReLU`` and then converted). Per activation it reports test accuracy (mean +- std over seeds),
dead units (total and per layer), sparsity, the gradient share reaching inactive units, saved
activation bytes per training step and the median step time.

Measurement definitions:

* dead units / sparsity: ``sugar_kernels.diagnostics.ActivationMonitor`` over the *test set*, model
  in eval mode, measured before training (epoch 0) and after each epoch. A unit is a channel of a
  conv feature map or a feature of a linear layer; it is dead when its output was > 0 on no element
  of any test image.
* grad -> inactive: share of the gradient (L1 mass, w.r.t. the activations' inputs) that reaches
  inactive elements (output <= 0), over the training steps of the last epoch. 0 for ReLU.
* saved bytes: bytes of the tensors autograd saves for backward in one training step (forward of
  one batch), via ``torch.autograd.graph.saved_tensors_hooks``, each storage counted once,
  parameters excluded. Includes what the convolutions/linears save, so it is the whole model's
  activation memory, not only the activation layers'.
* step time: median wall time of forward + backward + optimizer step, excluding the first steps and
  the last epoch (where the gradient monitor runs; with ``--epochs 1`` it is included), measured on
  whatever machine runs this, as it is loaded at the time.

Data never downloads unless ``--download`` is given. CIFAR is read from the torchvision on-disk
format: ``DATA_DIR/cifar-10-batches-py/{data_batch_1..5,test_batch}`` or
``DATA_DIR/cifar-100-python/{train,test}`` (``DATA_DIR`` may also be that folder itself).

Models (all built with ``nn.ReLU``):

* ``cnn``: 3 conv layers (W/2W/4W channels, W = ``--width``, default 32; no batch norm) and a
  128-unit hidden linear layer.
* ``resnet18``: torchvision ResNet-18, CIFAR variant: 3x3 stride-1 stem, no max pool.
* ``vgg16``: VGG-16 (configuration D) without batch norm, CIFAR variant: a 512-512-classes head
  after global average pooling; max pools that would shrink the map below 1x1 are dropped (digits).
  ``vgg16_bn`` is the same with batch norm after each conv.

Modules, one concern each: ``data`` (datasets), ``models`` (architectures, activation swap,
stress init), ``loop`` (training, evaluation, measurements, progress), ``report`` (aggregation
over seeds, Markdown tables), ``plots`` (figures), ``cli`` (arguments, the run, output files).
"""
