"""UniMMAD in PyTorch: config, backbones, the network, losses, training and evaluation."""
