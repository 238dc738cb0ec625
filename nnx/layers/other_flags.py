"""Keras's ``trainable`` and torch's ``training`` flags, which nnx layers refuse rather than ignore.

Set as plain attributes nnx never reads, they changed nothing while the user thought them in force."""

from __future__ import annotations

# What a layer has instead of torch's `training` attribute.
TRAINING_MODE = ("fit runs every layer's forward with training=True, and predict and evaluate with training=False; a "
                 "layer reads its forward's `training` argument. To keep a BatchNorm's running statistics as they "
                 "are while fitting, set its momentum to 0.0 (it still normalises with each batch's statistics in "
                 "training, as torch's does with momentum 0)")


class OtherLibrariesFlags:
    """Keras's ``trainable`` and torch's ``training``, as every `nnx.layers.Layer` answers them."""

    @property
    def trainable(self) -> bool:
        """True: nnx trains the parameters its optimizer holds, so a layer is frozen by leaving them out of it."""
        return True

    @trainable.setter
    def trainable(self, value: bool) -> None:
        # Keras's `layer.trainable = False` froze nothing
        if not value:  # True is what every layer is
            raise ValueError(
                f"{type(self).__name__}.trainable = False is not how nnx freezes a layer: fit trains the parameters "
                "its optimizer holds, so build the optimizer on the others, e.g. nnx.optim.Adam([p for p in "
                "model.parameters() if all(p is not q for q in frozen.parameters())]), and pass it to fit; "
                "model.summary() counts the parameters left out as not trained")

    @property
    def training(self) -> bool:
        """No such mode: each call says it (``forward(X, training=...)``), as `TRAINING_MODE` tells."""
        raise AttributeError(f"{type(self).__name__} has no training attribute: {TRAINING_MODE}")

    @training.setter
    def training(self, value: bool) -> None:
        # torch's `module.training = False` (what `.eval()` sets) left fit running the layer in training mode:
        # a BatchNorm's running statistics still moved
        raise ValueError(f"{type(self).__name__}.training = {value!r} sets no mode in nnx: {TRAINING_MODE}")
