"""One subpackage per API dialect (OpenAI, Responses, Anthropic): schemas, answers, streams, errors."""
