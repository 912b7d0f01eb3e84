"""Transcription: windows cut at known quiet points, the output formats exactly, the streamed text
joining, instructions, the window -> chat completion driver with a fake model standing in for
Phi4MM, and last Phi4MM.transcribe on the tiny checkpoint."""

from __future__ import annotations

import numpy as np
import pytest

from phi4mm.errors import InputError
from phi4mm.transcribe import (
    Delta,
    Segment,
    Transcript,
    TranscriptText,
    Window,
    instruction,
    language_name,
    plan_windows,
    render,
    timestamp,
    to_srt,
    to_vtt,
)

RATE = 16_000


def speech_like(duration_s: float, quiet: list[tuple[float, float, float]], rate: int = RATE,
                seed: int = 0) -> np.ndarray:
    """Loud noise (RMS ~0.3) with (start_s, end_s, amplitude) stretches turned down."""
    samples = np.random.default_rng(seed).normal(0, 0.3, int(duration_s * rate)).astype(np.float32)
    for start, end, amplitude in quiet:
        samples[int(start * rate):int(end * rate)] *= amplitude / 0.3
    return samples


def check_cover(windows: list[tuple[int, int]], n: int, rate: int = RATE) -> None:
    assert windows[0][0] == 0 and windows[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(windows, windows[1:], strict=False))  # contiguous
    assert all(0 < end - start <= 30 * rate for start, end in windows)


def test_75_s_clip_is_cut_in_its_silences():
    """Window 1 searches 25-30 s: the silence at 26-27 s wins over a mere dip at 28-28.5 s and
    over the longer silence at 10-12 s (too early). Window 2 (from ~27 s) searches ~52-57 s,
    where the only silence is 53-53.6 s. The rest (~21.5 s) is the last window."""
    quiet = [(10.0, 12.0, 0.0), (26.0, 27.0, 0.0), (28.0, 28.5, 0.05), (53.0, 53.6, 0.0)]
    samples = speech_like(75.0, quiet)
    windows = plan_windows(samples, RATE)
    check_cover(windows, len(samples))
    assert len(windows) == 3
    (_, cut1), (_, cut2), _ = windows
    assert 26.0 * RATE <= cut1 <= 27.0 * RATE
    assert 53.0 * RATE <= cut2 <= 53.6 * RATE
    for cut in (cut1, cut2):  # the cut's own 100 ms frame is silent
        assert np.abs(samples[cut - 800:cut + 800]).max() == 0.0


def test_quiet_but_not_silent_stretch_is_found():
    samples = speech_like(50.0, [(27.3, 27.8, 0.01)])
    (_, cut), _ = plan_windows(samples, RATE)
    assert 27.3 * RATE <= cut <= 27.8 * RATE


def test_without_quiet_each_window_ends_in_its_last_5_s():
    samples = speech_like(95.0, [], seed=3)
    windows = plan_windows(samples, RATE)
    check_cover(windows, len(samples))
    assert len(windows) == 4
    assert all(25 * RATE <= end - start for start, end in windows[:-1])


def test_short_clips_are_one_window():
    for seconds in (0.5, 10.0, 30.0):
        samples = speech_like(seconds, [])
        assert plan_windows(samples, RATE) == [(0, len(samples))]
    assert plan_windows(np.zeros(0, np.float32), RATE) == []


def test_the_last_window_is_at_least_1_s():
    """Silence at 29.8-30.5 s of a 30.5 s clip: the cut may not leave under 1 s."""
    samples = speech_like(30.5, [(29.8, 30.5, 0.0)])
    windows = plan_windows(samples, RATE)
    check_cover(windows, len(samples))
    assert len(samples) - windows[-1][0] >= RATE


def test_other_sample_rates():
    samples = speech_like(40.0, [(27.0, 27.5, 0.0)], rate=8000)
    (_, cut), (_, end) = plan_windows(samples, 8000)
    assert 27.0 * 8000 <= cut <= 27.5 * 8000 and end == len(samples)


def test_bad_window_settings_are_refused():
    with pytest.raises(InputError):
        plan_windows(np.zeros(10, np.float32), RATE, max_window_s=5.0, search_s=5.0)


SEGMENTS = (Segment(0, 0.0, 29.95, "Hello there."), Segment(1, 29.95, 61.2004, "Second -> part."),
            Segment(2, 61.2004, 3725.5, ""))


def test_srt_exactly():
    assert to_srt(SEGMENTS) == ("1\n00:00:00,000 --> 00:00:29,950\nHello there.\n\n"
                                "2\n00:00:29,950 --> 00:01:01,200\nSecond -> part.\n\n"
                                "3\n00:01:01,200 --> 01:02:05,500\n\n\n")


def test_vtt_exactly():
    assert to_vtt(SEGMENTS[:2]) == ("WEBVTT\n\n00:00:00.000 --> 00:00:29.950\nHello there.\n\n"
                                    "00:00:29.950 --> 00:01:01.200\nSecond -> part.\n\n")


def test_cue_text_cannot_end_a_cue_early():
    cue = to_srt([Segment(0, 0.0, 1.0, "a\n\n  b --> c")])
    assert cue == "1\n00:00:00,000 --> 00:00:01,000\na\nb -> c\n\n"


def test_timestamps_round_to_milliseconds():
    assert timestamp(3661.2346, ",") == "01:01:01,235"
    assert timestamp(0.0004, ".") == "00:00:00.000"
    assert timestamp(59.9996, ".") == "00:01:00.000"


USAGE = {"prompt_tokens": 400, "completion_tokens": 20, "prompt_tokens_details": {"audio_tokens": 375}}


def test_verbose_json_and_json():
    transcript = Transcript("transcribe", "german", 61.2004,
                            tuple(Segment(s.id, s.start_s, s.end_s, s.text, (1, 2), USAGE)
                                  for s in SEGMENTS[:2]))
    body = render(transcript, "verbose_json")
    assert body["task"] == "transcribe" and body["language"] == "german" and body["duration"] == 61.2
    assert body["text"] == "Hello there. Second -> part."
    first, second = body["segments"]
    assert (first["id"], first["start"], first["end"], first["text"]) == (0, 0.0, 29.95, "Hello there.")
    assert (second["id"], second["start"], second["end"], second["seek"]) == (1, 29.95, 61.2, 2995)
    assert first["tokens"] == [1, 2] and first["compression_ratio"] > 0
    usage = {"type": "tokens", "input_tokens": 800, "output_tokens": 40, "total_tokens": 840,
             "input_token_details": {"audio_tokens": 750, "text_tokens": 50}}
    assert body["usage"] == usage
    assert render(transcript, "json") == {"text": "Hello there. Second -> part.", "usage": usage}
    assert render(transcript, "text") == "Hello there. Second -> part."
    with pytest.raises(InputError) as caught:
        render(transcript, "xml")
    assert caught.value.param == "response_format"


def test_streamed_pieces_join_like_the_segments():
    """Each window stripped, windows joined by one space; the deltas add up to the same text."""
    windows = [[" ", " Hello", " world", "  "], ["   "], ["\n", "Next", " one.\n", ""], ["x"]]
    joined, deltas = TranscriptText(), []
    for pieces in windows:
        deltas += [joined.feed(piece) for piece in pieces]
        joined.end_window()
    assert joined.texts == ["Hello world", "", "Next one.", "x"]
    assert "".join(deltas) == "Hello world Next one. x"


def test_instructions_follow_the_model_card():
    assert instruction() == "Transcribe the audio clip into text."
    assert instruction(language="de") == "Transcribe the audio clip into text. The audio is in German."
    assert instruction("fr") == "Translate the audio to French."
    assert instruction("english", "zh") == "Translate the audio to English. The audio is in Chinese."
    assert language_name("Brazilian Portuguese") == "Brazilian Portuguese"
    for bad in ("xx", "", "12345", "<|end|>"):
        with pytest.raises(InputError):
            language_name(bad)


class FakeModel:
    """Answers each window with its length in samples, in two pieces."""

    def __init__(self):
        self.calls: list[tuple[list, dict]] = []

    def create_chat_completion(self, messages, stream, **options):
        assert stream is True
        self.calls.append((messages, options))
        clip = messages[-1]["content"][0]["audio"]
        usage = {"prompt_tokens": 10, "completion_tokens": 2, "prompt_tokens_details": {"audio_tokens": 7}}
        return iter([{"choices": [{"delta": {"content": " lasts"}}]},
                     {"choices": [{"delta": {"content": f" {len(clip.samples)} "}}], "usage": usage}])

    def tokenize(self, text: str) -> list[int]:
        return [len(word) for word in text.split()]


def test_driver_sends_one_chat_per_window():
    from phi4mm.media import MediaLimits, Waveform
    from phi4mm.transcribe import transcribe_events

    samples = speech_like(75.0, [(26.0, 27.0, 0.0), (53.0, 53.6, 0.0)])
    model = FakeModel()
    events = list(transcribe_events(model, (samples, RATE), MediaLimits(), language="de", prompt="Names: Ada.",
                                    max_tokens_per_window=64))
    assert [type(e) for e in events] == [Window, Delta, Delta, Segment] * 3 + [Transcript]
    transcript = events[-1]
    lengths = [round((s.end_s - s.start_s) * RATE) for s in transcript.segments]
    assert transcript.text == " ".join(f"lasts {n}" for n in lengths) and sum(lengths) == 75 * RATE
    assert "".join(e.text for e in events if isinstance(e, Delta)) == transcript.text
    assert transcript.language == "german" and transcript.task == "transcribe"
    assert transcript.duration_s == 75.0 and transcript.usage["input_tokens"] == 30
    messages, options = model.calls[0]
    assert messages[0] == {"role": "system", "content": "Names: Ada."}
    assert messages[1]["content"][1] == {"type": "text", "text": "Transcribe the audio clip into text. "
                                         "The audio is in German."}
    assert isinstance(messages[1]["content"][0]["audio"], Waveform)
    assert options["max_tokens"] == 64 and options["temperature"] == 0.0
    assert transcript.segments[0].tokens == (5, 6)


def test_driver_checks_before_any_output():
    from phi4mm.errors import MediaError
    from phi4mm.media import MediaLimits
    from phi4mm.transcribe import transcribe_events

    model = FakeModel()
    with pytest.raises(InputError):
        transcribe_events(model, (np.zeros(16000, np.float32), RATE), MediaLimits(), translate_to="xx")
    with pytest.raises(MediaError):
        transcribe_events(model, (np.zeros(16000 * 20, np.float32), RATE), MediaLimits(max_audio_s=10.0))
    assert model.calls == []


def test_phi4mm_transcribe_on_the_tiny_model(tiny_q4):
    """The public API end to end: segments follow the windows, the stream matches the result,
    and should_stop ends the transcription with Cancelled."""
    from phi4mm import Cancelled, Phi4MM

    samples = speech_like(35.0, [(27.0, 27.5, 0.0)])
    with Phi4MM.from_pretrained(tiny_q4, n_ctx=1024, n_threads=2) as model:
        transcript = model.transcribe((samples, RATE), max_tokens_per_window=4)
        assert [round(s.end_s, 2) for s in transcript.segments] == [27.45, 35.0]
        assert transcript.text == " ".join(s.text for s in transcript.segments if s.text)
        events = list(model.transcribe_stream((samples, RATE), max_tokens_per_window=4))
        again = events[-1]  # greedy: the same segments again (usage timings differ)
        assert [(s.start_s, s.end_s, s.text) for s in again.segments] == [
            (s.start_s, s.end_s, s.text) for s in transcript.segments]
        assert "".join(e.text for e in events if isinstance(e, Delta)) == transcript.text
        with pytest.raises(Cancelled):
            model.transcribe((samples, RATE), should_stop=lambda: True)
