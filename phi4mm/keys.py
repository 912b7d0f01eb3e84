"""One table of the names shared by the converter and the runtime: GGUF architectures, custom
metadata keys and the placeholder token ids (model-spec.md §8). Constants only."""

from __future__ import annotations

# general.architecture of each file the converter writes
TEXT_ARCH = "phi3"
VISION_ARCH = "phi4mm-vision"
AUDIO_ARCH = "phi4mm-audio"

# placeholder token ids: each is repeated once per media row after tokenizing (model-spec.md §8)
IMAGE_TOKEN_ID = 200010
AUDIO_TOKEN_ID = 200011
IMAGE_PLACEHOLDER = "<|endoftext10|>"
AUDIO_PLACEHOLDER = "<|endoftext11|>"

# custom metadata of the text GGUF
IMAGE_TOKEN_KEY = "phi4mm.image_token_id"
AUDIO_TOKEN_KEY = "phi4mm.audio_token_id"
EOS_TOKEN_IDS_KEY = "phi4mm.eos_token_ids"
ORIGINAL_CONTEXT_KEY = "phi3.rope.scaling.original_context_length"

# prefixes of the encoder files' hyper-parameters
VISION_PREFIX = "phi4mm.vision."
AUDIO_PREFIX = "phi4mm.audio."

# text decoder types `phi4mm convert --quant` writes, and the encoder files' types
QUANTS = ("f32", "f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q4_k_m")
ENCODER_TYPES = ("f16", "f32")

# where the image and audio encoders may run (--encoder-device, EngineSettings.encoder_device)
ENCODER_DEVICES = ("cpu", "cuda")
