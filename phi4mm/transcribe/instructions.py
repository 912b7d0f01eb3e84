"""The model card's instruction for one window (transcribe, or translate to a language), and
language names from ISO-639-1 codes or names."""

from __future__ import annotations

import re

from phi4mm.errors import InputError

TRANSCRIBE = "Transcribe the audio clip into text."
TRANSLATE = "Translate the audio to {language}."
LANGUAGE_HINT = " The audio is in {language}."

LANGUAGES = {  # ISO-639-1 code -> the English name the instruction uses
    "ar": "Arabic", "cs": "Czech", "da": "Danish", "de": "German", "el": "Greek", "en": "English",
    "es": "Spanish", "fi": "Finnish", "fr": "French", "he": "Hebrew", "hi": "Hindi", "hu": "Hungarian",
    "id": "Indonesian", "it": "Italian", "ja": "Japanese", "ko": "Korean", "nl": "Dutch", "no": "Norwegian",
    "pl": "Polish", "pt": "Portuguese", "ro": "Romanian", "ru": "Russian", "sv": "Swedish", "th": "Thai",
    "tr": "Turkish", "uk": "Ukrainian", "vi": "Vietnamese", "zh": "Chinese",
}


def language_name(value: str, param: str = "language") -> str:
    """An ISO-639-1 code ("de") or a language name ("german") -> the name used in instructions."""
    text = value.strip() if isinstance(value, str) else ""
    if text.lower() in LANGUAGES:
        return LANGUAGES[text.lower()]
    if len(text) > 3 and len(text) <= 40 and re.fullmatch(r"[^\W\d_]+(?:[ -][^\W\d_]+)*", text):
        return text[0].upper() + text[1:]
    raise InputError(f"{param} is {value!r}; expected an ISO-639-1 code ({', '.join(sorted(LANGUAGES))}) "
                     "or a language name such as 'German'", param=param)


def instruction(translate_to: str | None = None, language: str | None = None) -> str:
    """The model card's instruction for one window: transcribe, or translate to `translate_to`;
    a `language` hint (the spoken language) is added as one more sentence."""
    if translate_to is None:
        text = TRANSCRIBE
    else:
        text = TRANSLATE.format(language=language_name(translate_to, "translate_to"))
    if language is not None:
        text += LANGUAGE_HINT.format(language=language_name(language))
    return text
