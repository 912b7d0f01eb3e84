"""HF hub-layout checkpoint -> GGUF files (installed as phi4mm.converter)."""
