"""The model: loading and building (:mod:`load`), t1's own training forward (:mod:`forward`), the sampler's
decode step (:mod:`decode`), the attention-mask rule both use (:mod:`attention`) and the C kernels with their
PyTorch fallbacks (:mod:`kernels`)."""
