"""What a trained binary model stores and how it runs: the bit-aware summary, the 1-bit export format,
and packed (AND + popcount) inference, whose numba kernels live in ``deploy.kernels``."""
