"""The model: loading and building (:mod:`load`), t1's own forward (:mod:`forward`), the decode step
(:mod:`decode`) and the C kernels both use (:mod:`kernels`)."""
