"""The four input modes of Phi-4-multimodal (model-spec.md §4): derived once from what a prompt
holds, they pick the LoRA adapter and the audio projector head. Pure: stdlib only."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mode:
    name: str
    lora: str | None        # adapter active for the whole request: None, "vision" or "speech"
    audio_head: str | None  # projector head for audio rows: "speech" or "vision" (None: no audio)


TEXT = Mode("text", None, None)
VISION = Mode("vision", "vision", None)
SPEECH = Mode("speech", "speech", "speech")
VISION_SPEECH = Mode("vision_speech", "vision", "vision")


def mode_for(n_images: int, n_audios: int) -> Mode:
    """model-spec.md §4: images win the adapter; audio alone runs the speech adapter and head."""
    if n_images and n_audios:
        return VISION_SPEECH
    if n_images:
        return VISION
    return SPEECH if n_audios else TEXT
