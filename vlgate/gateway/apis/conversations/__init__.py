"""The conversations API (OpenAI's), answered from the store."""
