"""The OpenAI Responses dialect: its request rules, answer completion and stream events."""
