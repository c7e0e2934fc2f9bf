"""ibdml: a workbook for Intra-Batch Deep Metric Learning (Seidenschwarz et al., ICML 2021)."""

__version__ = "0.1.0"
