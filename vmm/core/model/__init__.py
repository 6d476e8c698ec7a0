"""What a model folder holds: config, weight formats and headers, GGUF metadata, chat templates."""
