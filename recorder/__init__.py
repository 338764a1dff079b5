"""Full-call recording: encrypted archives, metadata, retention, access control, transcripts.

* :mod:`recorder.store` — the adapter API (:class:`~recorder.store.Recorder`: ``spool_path``,
  ``reception_number``, ``finalize``, ``reconcile``) and crash recovery.
* :mod:`recorder.archive` / :mod:`recorder.crypto` — spool paths, WAV normalisation, the
  chunked AES-256-GCM archive format and the key ring.
* :mod:`recorder.retention` — ``<site>/recording.toml``, retention classes, purge plans.
* :mod:`recorder.access` — users and roles, search, playback, export, audit.
* :mod:`recorder.transcribe`, :mod:`recorder.stats`, :mod:`recorder.bench`, :mod:`recorder.cli`.
"""
