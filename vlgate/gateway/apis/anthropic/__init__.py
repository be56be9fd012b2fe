"""The Anthropic Messages dialect: its request rules, errors and stream events."""
