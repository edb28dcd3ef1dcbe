"""The foundation every stage shares, apart from scoring's machinery.

Stages (``scoring``, ``selection``, ``training``) import from one another only what lives here:

- :mod:`~scoring.foundation.errors`: the one user-error type;
- :mod:`~scoring.foundation.storage`: fsspec helpers, durable writes, fresh listings, concurrent reads, redaction;
- :mod:`~scoring.foundation.lock`: the lock on an output (``flock`` locally, a lock object with fencing on stores);
- :mod:`~scoring.foundation.stagedir`: the stage-directory protocol (identity, refuse/resume/replace, staged writes,
  marker last, the overlap checks between outputs and inputs);
- :mod:`~scoring.foundation.kinds`: the kinds of stage output and :func:`~scoring.foundation.kinds.identify`, which
  says what a path is;
- :mod:`~scoring.foundation.scores` and :mod:`~scoring.foundation.selected`: the contracts of ``scores/`` (files,
  Parquet schema, manifest) and ``selected/``;
- :mod:`~scoring.foundation.fingerprints`: of a checkpoint, a tokenizer, a manifest, an identity;
- :mod:`~scoring.foundation.sample_format`: how an input row becomes a sample;
- :mod:`~scoring.foundation.ray_local`: a cluster joined, or a local Ray bound to 127.0.0.1;
- :mod:`~scoring.foundation.console`, :mod:`~scoring.foundation.lazy`, :mod:`~scoring.foundation.cache`,
  :mod:`~scoring.foundation.versions`.

Nothing here imports torch, transformers or Ray at module level.
"""
