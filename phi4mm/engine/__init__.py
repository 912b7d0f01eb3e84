"""Serving the decoder (model-spec.md §3, §4, §8): engine (requests in, streams out), scheduler (the
step loop), sequence (one request's state), contexts (KV slots, LoRA, LongRoPE), encoders (media ->
projected rows, with their cache), llama (the only llama_cpp import: one owner per C handle),
tokenizer, streaming (UTF-8 and stop strings) and malloc (the allocator setting a loaded model
needs)."""
