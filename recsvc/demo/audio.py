"""Playable demo recordings: short PCM WAV tunes made from plain numbers, no files shipped.

The fake upstream (``recsvc.demo.fake_upstream``) and the demo need real audio that
a browser plays and that passes the service's own audio check (CONTRACT 5:
RIFF/WAVE is ``audio/wav``). Everything here is deterministic, so a test can
compare bytes and a demo call always sounds the same:

- ``tone_wav(notes)``: 16-bit mono PCM from (frequency Hz, seconds) pairs,
  frequency 0 being silence. Each note fades in and out over a few
  milliseconds, because a sine cut off mid-swing clicks.
- ``tune_for(name)``: a different short pentatonic tune per name, chosen from
  the sha256 of the name (not ``hash()``, which changes between processes).
- ``sized_wav(n_bytes)``: a valid WAV of exactly ``n_bytes``, for tests about
  sizes (``--max-recording-bytes``, ranges, eviction).
"""

from __future__ import annotations

import array
import hashlib
import io
import math
import sys
import wave
from typing import Sequence

#: The canonical WAV header written by ``wave``: RIFF, fmt and data chunk heads.
WAV_HEADER_BYTES = 44

# C major pentatonic over two octaves: any sequence of these sounds like a tune.
_PENTATONIC_HZ = (
    261.63, 293.66, 329.63, 392.00, 440.00,
    523.25, 587.33, 659.25, 783.99, 880.00,
)
_AMPLITUDE = 0.4          # of full scale: loud enough to hear, never clipping
_FADE_SECONDS = 0.005     # per note edge; long enough to kill the click
_SIZED_BLOCK_SECONDS = 2.0  # sized_wav repeats one block of this length


def _samples(notes: Sequence[tuple[float, float]], rate: int) -> list[float]:
    """The notes as samples in -1.0..1.0, each note faded in and out."""
    samples: list[float] = []
    for frequency, seconds in notes:
        count = round(seconds * rate)
        fade = min(round(_FADE_SECONDS * rate), count // 2)
        if frequency <= 0:
            samples.extend([0.0] * count)
            continue
        step = 2 * math.pi * frequency / rate
        for i in range(count):
            edge = min(i, count - 1 - i)
            gain = _AMPLITUDE if edge >= fade else _AMPLITUDE * edge / fade
            samples.append(gain * math.sin(step * i))
    return samples


def _wav_bytes(frames: bytes, rate: int, sample_width: int) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(sample_width)
        wav.setframerate(rate)
        wav.writeframes(frames)
    return buffer.getvalue()


def tone_wav(notes: Sequence[tuple[float, float]], rate: int = 8000) -> bytes:
    """A 16-bit mono PCM WAV playing ``notes``, each (frequency Hz, seconds); 0 Hz is a rest."""
    pcm = array.array("h", (round(s * 32767) for s in _samples(notes, rate)))
    if sys.byteorder == "big":
        pcm.byteswap()  # WAV is little-endian
    return _wav_bytes(pcm.tobytes(), rate, sample_width=2)


def _notes_for(name: str, seconds: float) -> list[tuple[float, float]]:
    """A tune of exactly ``seconds`` whose tempo and notes come from the name's sha256."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    beat = 0.15 + (digest[0] % 6) * 0.04        # 0.15 .. 0.35 s per note
    notes: list[tuple[float, float]] = []
    left = seconds
    index = 1
    while left > 1e-9:
        byte = digest[index % len(digest)]
        index += 1
        frequency = 0.0 if byte % 11 == 0 else _PENTATONIC_HZ[byte % len(_PENTATONIC_HZ)]
        length = min(beat, left)
        notes.append((frequency, length))
        left -= length
    return notes


def tune_for(name: str, seconds: float = 2.0) -> bytes:
    """The demo recording of ``name`` (a call_sid, say): the same tune every time, another per name."""
    return tone_wav(_notes_for(name, seconds))


def sized_wav(n_bytes: int, seed: str = "") -> bytes:
    """A valid WAV of exactly ``n_bytes`` bytes, a tune chosen by ``seed``.

    The samples are 8-bit, so any data length is a whole number of frames and
    every size from the bare 44-byte header up is possible. (RIFF wants even
    chunk sizes; an odd size leaves out the final pad byte, which ``wave`` and
    browsers accept.) The tune is computed for at most two seconds and then
    repeated, so a 200 MB file costs a byte copy, not a synthesis.
    """
    if n_bytes < WAV_HEADER_BYTES:
        raise ValueError(f"a WAV needs at least {WAV_HEADER_BYTES} bytes, asked for {n_bytes}")
    rate = 8000
    frame_count = n_bytes - WAV_HEADER_BYTES
    block_seconds = min(frame_count / rate, _SIZED_BLOCK_SECONDS)
    # 8-bit WAV samples are unsigned, silence at 128.
    block = bytes(128 + round(s * 127) for s in _samples(_notes_for(seed, block_seconds), rate))
    if block:
        frames = (block * (frame_count // len(block) + 1))[:frame_count]
    else:
        frames = b"\x80" * frame_count
    data = _wav_bytes(frames, rate, sample_width=1)
    assert len(data) == n_bytes, (len(data), n_bytes)
    return data
