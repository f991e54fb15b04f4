"""Open real-audio benchmark: a pretraining corpus built from Debian `main` packages, three probe
tasks rendered or extracted from other Debian sources, and the leakage guard between them.

* :mod:`ssamba.openaudio.sources`: which packages make the corpus, what kind of audio each file is,
  and which sources are reserved for the probe tasks (never used for pretraining).
* :mod:`ssamba.openaudio.corpus`: fetch, unpack, convert, segment, top up, check, report.
* :mod:`ssamba.openaudio.render`: MIDI writing, fluidsynth rendering, TTS engines (arg lists, no shell).
* :mod:`ssamba.openaudio.probes`: tasks A (instrument family), B (0 A.D. Foley), C (TTS keywords).
* :mod:`ssamba.openaudio.leakage`: source allow-list and clip fingerprints.
* :mod:`ssamba.openaudio.benchmark`: the results table (JSON + Markdown).
"""
