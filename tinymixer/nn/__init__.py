"""The networks, every forward and backward by hand: layers, blocks, the Mixer, the CNN baseline, gradient checks."""
