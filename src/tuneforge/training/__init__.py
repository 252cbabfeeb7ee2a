"""Training: the Trainer subclass, losses, optimizers, callbacks and checkpoints."""
