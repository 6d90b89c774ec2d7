"""Triton kernels of rubricrl: the CUDA kernels of the ``rubricrl`` ops (see ``rubricrl.ops._library``).

Imported through ``rubricrl.ops._backend.triton_kernels``: on CPU tensors these
kernels run under the Triton interpreter (``TRITON_INTERPRET=1``), which Triton
reads when a kernel is decorated, i.e. when this package is first imported.
"""
