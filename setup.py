"""Build of the optional C extensions; everything else is in pyproject.toml.

``notochord_rt.engine._int8gemv`` holds the batch-1 int8 kernels of FastCore (AVX-512 VNNI
GEMV, fused GLU + LayerNorm, tanh), chosen per function with ``target`` attributes and
used only when the CPU has VNNI at run time; elsewhere FastCore uses FBGEMM. Also optional.

``notochord_rt.midi._cingest`` is plain C99 against the Python C API. It is optional: on a
machine without a C compiler the install still succeeds and ``load_midi`` uses the Python
ingest. ``-ffp-contract=off`` (no fused multiply-add) and no ``-ffast-math`` keep its
float64 times bit-identical to the numpy ones.
"""

import sys

from setuptools import Extension, setup

if sys.platform == "win32":
    FLAGS = ["/fp:precise"]
else:
    FLAGS = ["-std=c99", "-O2", "-ffp-contract=off", "-fno-fast-math", "-Wall"]

SOURCES = ["_cingest.c", "_cingest_smf.c", "_cingest_parts.c", "_cingest_sort.c"]

setup(
    ext_modules=[
        Extension(
            "notochord_rt.midi._cingest",
            [f"src/notochord_rt/midi/{name}" for name in SOURCES],
            depends=["src/notochord_rt/midi/_cingest.h"],
            optional=True,
            extra_compile_args=FLAGS,
        ),
        Extension(
            "notochord_rt.engine._int8gemv",
            ["src/notochord_rt/engine/_int8gemv.c"],
            optional=True,
            extra_compile_args=[] if sys.platform == "win32" else ["-O3", "-Wall"],
        ),
    ]
)
