"""What several test modules share (no test module imports another; they import from here).

- ``numerics``: relative error in float64.
- ``ops``: random SSD inputs in realistic ranges and the float64 truths of the conv and norm.
- ``kernels``: device, dtype tolerances and output poisoning of the kernel tests.
- ``configs``: micro model configurations.
- ``models``: stand-in models with the BSMamba2 interface.
- ``musdb``: a generated MUSDB18-HQ folder.
- ``http``: a loopback HTTP server for the download tests.
- ``callbacks``: Lightning callbacks the training tests name by class path.
- ``web``: the ``serve`` app on a loopback port, an HTTP client, generated songs.
"""
