"""hardfocus's foundation: what every stage stands on, and no stage owns.

The stages (``scoring``, ``selection``, ``training``, ``exporting``) import this package and themselves, never one
another; ``pipelines`` wires them. Here:

- :mod:`~hardfocus.errors`: the one user-error type;
- :mod:`~hardfocus.storage`: fsspec helpers, durable writes, fresh listings, concurrent reads, redaction;
- :mod:`~hardfocus.lock`: the lock on an output (``flock`` locally, a lock object with fencing on stores);
- :mod:`~hardfocus.stagedir`: the stage-directory protocol (identity, refuse/resume/replace, staged writes, marker
  last, the overlap checks between outputs and inputs);
- :mod:`~hardfocus.kinds`: the kinds of stage output and :func:`~hardfocus.kinds.identify`, which says what a path is;
- :mod:`~hardfocus.parts`: the one contract of every part a stage writes (its stamp) and the one reader that checks it;
- :mod:`~hardfocus.contracts`: what ``scores/``, ``selected/`` and ``decisions/`` hold (files, schemas, manifests);
- :mod:`~hardfocus.readers`: the input shards, one table of formats and their readers;
- :mod:`~hardfocus.tokenize`, :mod:`~hardfocus.chat`: a row's sample as token ids (conversations through the chat
  template), the same in scoring, training on raw shards and eval;
- :mod:`~hardfocus.fingerprints`: of a checkpoint, a tokenizer, any identity;
- :mod:`~hardfocus.models`, :mod:`~hardfocus.tokenizers`: which model (aliases, GGUF) and its tokenizer;
- :mod:`~hardfocus.sample_format`: how an input row becomes a sample;
- :mod:`~hardfocus.ray_local`: a cluster joined, or a local Ray bound to 127.0.0.1;
- :mod:`~hardfocus.console`, :mod:`~hardfocus.lazy`, :mod:`~hardfocus.cache`, :mod:`~hardfocus.versions`,
  :mod:`~hardfocus.durations`.

Nothing here imports torch, transformers, Ray or polars at module level.
"""
