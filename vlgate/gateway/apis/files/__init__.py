"""The files API (OpenAI's), answered from the store."""
