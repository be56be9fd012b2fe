"""The batches API (OpenAI's), answered from the store."""
