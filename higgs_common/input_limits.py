"""Default input limits every CLI shares, importable without torch (argument parsers read them).

`higgs_common.audio_io` applies them and re-exports both names.
"""

# Default speech floor in dBFS RMS (AES17; see `higgs_common.audio_io.rms_dbfs`).  Clips whose
# DC-free level is below it hold no speech; `--speech-floor-dbfs` changes it on every CLI.
DEFAULT_SPEECH_FLOOR_DBFS = -60.0
# Both pipelines' default `max_audio_seconds`: longer clips are an AudioTooLongError, not a silent
# memory blow-up (the released codec runs at 25 frames/s, so 30 s = 750 frames per codebook).
DEFAULT_MAX_AUDIO_SECONDS = 30.0
