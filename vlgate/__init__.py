"""vlgate: OpenAI-compatible gateway for llama-server fleets."""
__version__ = "0.1.0"
