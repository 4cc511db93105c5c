"""ONNX export of models holding tritonlstm layers (installed as ``tritonlstm.export``).

    from tritonlstm.export import export_onnx, verify_onnx
    proto = export_onnx(model, (x,), "model.onnx")     # one call; batch and time dimensions dynamic
    report = verify_onnx(model, "model.onnx", (x,))    # onnxruntime against PyTorch, raises on mismatch

Needs the ``onnx`` extra (``pip install "tritonlstm[onnx]"``): onnx, onnxscript, onnxruntime.
"""

from tritonlstm.export.onnx_export import (
    EXPORT_DTYPES,
    MIN_OPSET,
    VerifyReport,
    check_float16,
    export_onnx,
    verify_onnx,
)

__all__ = ["EXPORT_DTYPES", "MIN_OPSET", "VerifyReport", "check_float16", "export_onnx", "verify_onnx"]
