"""Models: backbones, transfer strategies, the training loop, heads, features and checkpoints."""
