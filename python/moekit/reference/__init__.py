"""NumPy float64 oracle of every op of SPEC.md: same names and signatures as the GPU ops, NumPy in
and out. The tests compare the CUDA kernels against it. It needs NumPy only (ml_dtypes.bfloat16
arrays are accepted: they are upcast like every other input), never imports the rest of the package
and never touches a GPU.

Router (section 1): _router.py. Aux-loss scores and aux loss (sections 2, 3): _aux.py. Fused
SiLU-and-mul with FP8 quantization, and FP8 quantization alone (section 6): _quant.py, the one family
done in exact fp32 steps rather than float64 (the SPEC fixes them so that q and scale bytes match the
kernels bit for bit); its q is ml_dtypes.float8_e4m3fn. Fused epilogues (section 7): _epilogue.py.
Grouped top-k for inference and token alignment (sections 4, 5): _routing.py.
"""

from ._aux import *  # noqa: F401,F403
from ._aux import __all__ as _aux_all
from ._epilogue import *  # noqa: F401,F403
from ._epilogue import __all__ as _epilogue_all
from ._quant import *  # noqa: F401,F403
from ._quant import __all__ as _quant_all
from ._router import *  # noqa: F401,F403
from ._router import __all__ as _router_all
from ._routing import *  # noqa: F401,F403
from ._routing import __all__ as _routing_all

__all__ = [*_router_all, *_aux_all, *_routing_all, *_quant_all, *_epilogue_all]
