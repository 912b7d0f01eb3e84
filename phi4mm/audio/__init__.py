"""The audio side in numpy: waveform -> log-mel (features) -> Conformer -> projector rows
(encoder), model-spec.md §7. Pure: numpy + scipy.signal, no I/O."""

from phi4mm.audio.encoder import AudioConfig, AudioWeights, encode_audio, encode_features, load_weights, project
from phi4mm.audio.features import log_mel, n_audio_tokens, to_model_rate

__all__ = ["AudioConfig", "AudioWeights", "encode_audio", "encode_features", "load_weights", "log_mel",
           "n_audio_tokens", "project", "to_model_rate"]
