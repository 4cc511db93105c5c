"""Data files shipped for `tritonlstm demo` (see README.md here for sources and licences)."""
