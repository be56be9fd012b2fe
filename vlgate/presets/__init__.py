"""Task presets: prompts, sampling and output parsers for Youtu-VL tasks."""
