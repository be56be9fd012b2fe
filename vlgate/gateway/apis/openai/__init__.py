"""The OpenAI dialect: chat/completions, completions, embeddings, token routes, models."""
