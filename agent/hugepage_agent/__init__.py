"""hugepage-agent: explicit huge pages for llama.cpp model servers."""

__version__ = "0.1.0"
