"""The one endpoint every API route goes through: bounded body, context, dispatch, answers and SSE."""
