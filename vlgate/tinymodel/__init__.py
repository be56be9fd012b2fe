"""A tiny generated Youtu-VL-shaped GGUF model for the demo and the test bed (not a real model)."""
