"""A small `dual-cpu` config for the training tests: seconds on 2 cores."""

TINY_DUAL_CPU = {
    "ground_size": [32, 128],
    "aerial_size": [32, 32],
    "channels": [8, 16, 16, 32, 32, 32],
    "strides": [2, 2, 2, 1, 2, 1],
    "head_channels": 8,
    "embed_dim": 32,
}
