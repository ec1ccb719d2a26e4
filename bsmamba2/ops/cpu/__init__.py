"""Our C kernels for CPU inference, built with the system's C compiler on first use
(:mod:`bsmamba2.ops.cpu.build`); the PyTorch reference serves wherever they cannot."""
