"""t1's C kernels for CPUs: decode-step attention for the fast sampler; fused SwiGLU, RoPE and the RMSNorm
backward for bf16 training (SwiGLU also in the sampler). Compiled at first use by :mod:`t1.kernels.build`; used through
:mod:`t1.kernels.ops`, whose functions fall back to PyTorch ops wherever a kernel is unavailable."""
