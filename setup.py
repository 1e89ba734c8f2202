"""Builds the Cython kernels in cext/. Set GRIDEDGE_NO_EXT=1 to skip them (pure-Python twins only)."""
import os

import numpy
from setuptools import Extension, setup

ext_modules = []
if not os.environ.get("GRIDEDGE_NO_EXT"):
    from Cython.Build import cythonize

    ext_modules = cythonize(
        [Extension("gridedge.cext._kernels", ["cext/_kernels.pyx"], include_dirs=[numpy.get_include()]),
         # no fused multiply-add: the PMU kernel must give its twin's results to the bit on ARM too
         Extension("gridedge.cext._pmu", ["cext/_pmu.pyx"], include_dirs=[numpy.get_include()],
                   extra_compile_args=["-ffp-contract=off"], libraries=["m"])],
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False, "cdivision": True},
    )

setup(ext_modules=ext_modules)
