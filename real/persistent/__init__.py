"""The persistent tier: training state in torch.distributed.checkpoint (DCP) layout via fsspec.

A checkpoint of iteration N lives in ``<url>/iter_<N, 10 digits>/``:

- the DCP files (``.metadata``, ``__<rank>_0.distcp``) holding every tensor of the state, so
  plain ``torch.distributed.checkpoint.load`` reads it (``{"model": model.state_dict()}``
  loads the weights; FSDP2's DTensor shards are stored as one global tensor and reshard on
  load). Tensors under the *shared* top-level keys (``model``, ``optim``) are stored under
  their dotted path (``model.blocks.0.fc.weight``): DTensors as shards, plain tensors once
  (DCP keeps one copy of a tensor every rank holds, as under DDP). Every other tensor is the
  rank's own (generator states, say) and lives under ``ranks.<rank>.<path>``;
- ``rank_<r>.json``, each rank's JSON values (optimizer hyper-parameters, data position,
  schedule, iteration) and the DCP key of each of its tensors, written aside and renamed,
  never pickle.

DCP's ``.metadata`` is a pickle, and unpickling runs code of the file's choosing, so it is
loaded only after a keyed sidecar vouches for it: rank 0 writes ``.metadata.hmac`` beside it
(JSON: ``{"format", "algorithm": "HMAC-SHA256", "key": <which variable>, "mac"}``, the MAC of
``"gemini-dcp-metadata/1\0" + <the .metadata bytes>``), and every load here reads the bytes,
checks the MAC (``hmac.compare_digest``) and only then unpickles those same bytes
(:class:`VerifiedFsspecReader`); a missing or wrong sidecar is refused with
:class:`MetadataVerificationError`. The key (:func:`metadata_key`): ``GEMINI_PERSISTENT_KEY``
when set (a secret that outlives one job, so a later job can load this one's checkpoints), else
the job's token ``GEMINI_TOKEN``, else this user's key file
(``~/.config/gemini-ckpt/persistent.key``, made on first use, mode 0600). What is trusted:
whoever knows the key. The tensor files are read by DCP with ``torch.load(weights_only=True)``,
which builds tensors only, and everything else is JSON.

``<url>/index.json`` lists the complete checkpoints. Rank 0 rewrites it (atomically: aside and
renamed locally, one PUT on object stores) only after every rank has finished writing, so a
crash at any moment never advertises a partial checkpoint; readers trust only the index.
Older checkpoints beyond ``keep`` are deleted after the index stops listing them.

``url`` is a local path or any fsspec URL (``s3://bucket/prefix``, ``file://``, ...);
``storage_options`` go to fsspec; when none are given they are read as JSON from the
``GEMINI_STORAGE_OPTIONS`` environment variable, so processes started by an agent inherit them
(for an S3 endpoint such as ``rclone serve s3``: ``{"key": ..., "secret": ...,
"client_kwargs": {"endpoint_url": ...}}``, and set ``AWS_RESPONSE_CHECKSUM_VALIDATION=
when_required``; docs/design.md section 6).

``save_persistent`` is synchronous and collective over the ranks; ``BackgroundPersister``
runs it in a thread so training never waits for storage.

**Emulated storage bandwidth**: ``real.persistent.throttle``
(``cluster.storage.emulate_bandwidth``).
"""

# The modules:
#   storage      PersistentStorage: the folder of checkpoints, its index, fsspec options
#   metadata     the keyed sidecar of DCP's pickled .metadata, and its check
#   dcp          save_persistent / load_persistent: one state in DCP layout, collective
#   persister    saves that log their events; BackgroundPersister (a save in its own thread)
#   from_memory  every K-th committed in-memory checkpoint handed to the persister (Gemini)
#   baseline     PersistentCheckpointer: the persistent-storage baseline ("NFS")
#   throttle     emulated storage bandwidth
