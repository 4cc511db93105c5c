"""ONNX export of models holding tritonlstm layers (installed as ``tritonlstm.export``).

Not implemented yet: the export API (``export_onnx``, ``verify_onnx``) is the subject of a later issue.
"""

__all__: list[str] = []
