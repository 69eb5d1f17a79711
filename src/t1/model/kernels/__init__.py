"""t1's C kernels for CPUs: for the fast sampler, a decoding step's attention (for bf16 models the whole
block: RoPE, cache write, attention); for bf16 training, causal attention over packed sequences (forward and
backward) and fused SwiGLU, RoPE and RMSNorm passes (SwiGLU and RMSNorm in the sampler too). Compiled at
first use by :mod:`t1.model.kernels.build`; used through :mod:`t1.model.kernels.ops`, whose functions fall back to
PyTorch ops wherever a kernel is unavailable."""
