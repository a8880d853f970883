"""Framework state adapters: one function out, one function in, per training framework.

Each adapter turns a framework's training objects into the state a checkpointer stores (a
nested mapping of tensors and JSON values) and puts such a state back into freshly built
objects of the same job (same world size):

``gemini_ckpt.adapters.ddp``        a plain module or its ``DistributedDataParallel`` wrapper
``gemini_ckpt.adapters.fsdp2``      an FSDP2 (``fully_shard``) module: each rank's shards
``gemini_ckpt.adapters.deepspeed``  a DeepSpeed engine under ZeRO stage 1, 2 or 3

``state_dict(...)`` returns cloned tensors by default, so the state may be kept while training
goes on; ``clone=False`` hands out the live tensors, for a checkpointer's ``save`` that copies
them before it returns. ``load_state_dict(...)`` never keeps references to the state it is
given. Import the adapter you use; the DeepSpeed one needs the ``deepspeed`` extra
(``pip install 'gemini-ckpt[deepspeed]'``).
"""
