"""Models out of feds2r: standard ``transformers`` directories and ONNX graphs, with a model card.

See docs/export.md. :func:`export_model` is what ``feds2r export`` calls.
"""

from feds2r.export.card import model_card
from feds2r.export.export import FORMATS, ExportResult, export_model
from feds2r.export.to_hf import check_hf_exportable, preprocessor_config, write_hf
from feds2r.export.to_onnx import OPSET, TOLERANCE, OnnxResult, write_onnx

__all__ = [
    "FORMATS",
    "OPSET",
    "TOLERANCE",
    "ExportResult",
    "OnnxResult",
    "check_hf_exportable",
    "export_model",
    "model_card",
    "preprocessor_config",
    "write_hf",
    "write_onnx",
]
