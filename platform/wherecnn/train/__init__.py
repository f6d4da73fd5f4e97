"""Training: losses, the one training function (local loop and Ray Train), checkpoints with a model card."""
