"""emi_lib: an open workbench for Emotional Mimicry Intensity (EMI) estimation.

Reimplements and stress-tests the dual-stage cross-modal alignment method
(arXiv 2503.10603). See the README and the numbered notebooks.
"""

from emi_lib.constants import EMOTIONS, HEADER, SAMPLE_RATE

__version__ = "0.1.0"
__all__ = ["EMOTIONS", "HEADER", "SAMPLE_RATE", "__version__"]
