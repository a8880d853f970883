"""The training workload: model, schedule, data, RNG states, trainer determinism, weights files."""

from __future__ import annotations

import bz2
import importlib.util
import itertools
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from running import rank_outputs, rank_scripts

from real.engine.state import flatten_state, unflatten_state
from real.trainer.training_state import clone_state
from real.trainer.workload.data import ByteTokenizer, Corpus, DataPipeline, load_corpus
from real.trainer.workload.model import GPT, GPTConfig, parameter_count
from real.trainer.workload.rng import capture_rng_state, restore_rng_state
from real.trainer.workload.schedule import learning_rate_at
from real.trainer.workload.trainer import Trainer, TrainerConfig
from real.trainer.workload.weights import read_tensors, state_digest, write_tensors
from shared.scenario import ModelConfig

TINY = GPTConfig(layers=2, hidden=32, heads=4, context=32)


def tiny_config(**changes: object) -> TrainerConfig:
    values: dict[str, object] = {
        "model": TINY,
        "iterations": 8,
        "warmup_iterations": 2,
        "batch_size_per_rank": 2,
    }
    values.update(changes)
    return TrainerConfig(**values)  # type: ignore[arg-type]


# --- model -------------------------------------------------------------------------------


@pytest.mark.parametrize(("layers", "hidden"), [(2, 32), (4, 128), (8, 448)])
def test_parameter_count_matches_the_scenario_formula(layers: int, hidden: int) -> None:
    model = GPT(GPTConfig(layers=layers, hidden=hidden, heads=4, context=64))
    expected = ModelConfig(layers=layers, hidden=hidden, heads=4, context=64).parameter_count
    assert parameter_count(model) == expected


def test_initialisation_depends_only_on_the_seed() -> None:
    torch.manual_seed(123)  # the global generator must not matter
    first = GPT(TINY, seed=7).state_dict()
    torch.manual_seed(456)
    second = GPT(TINY, seed=7).state_dict()
    assert state_digest(first) == state_digest(second)
    assert state_digest(GPT(TINY, seed=8).state_dict()) != state_digest(first)
    weight = first["blocks.0.fc.weight"]
    assert abs(float(weight.std()) - 0.02) < 0.002
    assert torch.all(first["blocks.0.fc.bias"] == 0)
    assert torch.all(first["blocks.0.ln1.weight"] == 1)


def test_model_rejects_sequences_longer_than_the_context() -> None:
    with pytest.raises(ValueError, match="context"):
        GPT(TINY)(torch.zeros(1, TINY.context + 1, dtype=torch.long))


def test_config_rejects_heads_not_dividing_width() -> None:
    with pytest.raises(ValueError, match="heads"):
        GPTConfig(hidden=30, heads=4)


# --- schedule ----------------------------------------------------------------------------


def test_schedule_warms_up_then_decays_to_the_floor() -> None:
    rates = [learning_rate_at(s, peak=1.0, warmup_steps=4, total_steps=20) for s in range(1, 25)]
    assert rates[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in itertools.pairwise(rates[3:]))
    assert rates[19] == pytest.approx(0.1)
    assert rates[23] == pytest.approx(0.1)


def test_schedule_without_warmup_starts_at_the_peak() -> None:
    assert learning_rate_at(1, peak=2.0, warmup_steps=0, total_steps=10) == pytest.approx(
        2.0 * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi / 10)))
    )
    with pytest.raises(ValueError, match="step"):
        learning_rate_at(0, peak=1.0, warmup_steps=0, total_steps=10)


# --- data --------------------------------------------------------------------------------


def test_byte_tokenizer_round_trips_any_text() -> None:
    tokenizer = ByteTokenizer()
    text = "Gemini — in-memory checkpoints ✓"
    tokens = tokenizer.encode(text)
    assert tokens.dtype == np.uint8 and len(tokens) == len(text.encode())
    assert tokenizer.decode(tokens) == text


def test_default_corpus_is_the_python_documentation_shipped_with_cpython() -> None:
    corpus = load_corpus()
    assert "pydoc_data" in corpus.source
    assert len(corpus) > 100_000
    assert b"for" in corpus.tokens[:100_000].tobytes()
    assert load_corpus().fingerprint == corpus.fingerprint


def test_batches_are_a_pure_function_of_seed_rank_world_and_position() -> None:
    corpus = load_corpus()
    one = DataPipeline(corpus, context=16, batch_size=3, seed=1, rank=0, world_size=2)
    two = DataPipeline(corpus, context=16, batch_size=3, seed=1, rank=0, world_size=2)
    other_rank = DataPipeline(corpus, context=16, batch_size=3, seed=1, rank=1, world_size=2)
    first = [one.next_batch() for _ in range(3)]
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        for a, b in zip(first, [two.next_batch() for _ in range(3)], strict=True)
    )
    assert not torch.equal(first[0][0], other_rank.next_batch()[0])
    inputs, targets = first[0]
    assert inputs.shape == (3, 16) and inputs.dtype == torch.int64
    assert torch.equal(inputs[:, 1:], targets[:, :-1])  # targets are the next bytes


def test_data_position_resumes_where_the_state_left_off() -> None:
    corpus = load_corpus()
    running = DataPipeline(corpus, context=8, batch_size=2, seed=0, rank=1, world_size=2)
    for _ in range(5):
        running.next_batch()
    saved = running.state()
    expected = running.next_batch()
    resumed = DataPipeline(corpus, context=8, batch_size=2, seed=0, rank=1, world_size=2)
    resumed.load_state(saved)
    assert saved["position"] == 5
    assert torch.equal(resumed.next_batch()[0], expected[0])
    elsewhere = DataPipeline(Corpus.from_bytes(b"another corpus entirely" * 10, "x"), 8, 2, 0, 1, 2)
    with pytest.raises(ValueError, match="same corpus"):
        elsewhere.load_state(saved)


def write_dump(path: Path) -> None:
    pages = [
        ("Alan Turing", "'''Alan Turing''' was a [[mathematician]]."),
        ("Turing", "#REDIRECT [[Alan Turing]]"),
        ("Ada Lovelace", "'''Ada Lovelace''' wrote the first program &amp; notes."),
    ]
    body = "".join(
        f"<page><title>{title}</title><ns>0</ns><id>{i}</id><revision><id>{i}</id>"
        f'<text bytes="{len(text)}" xml:space="preserve">{text}</text></revision></page>'
        for i, (title, text) in enumerate(pages)
    )
    xml = (
        '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.11/" version="0.11" '
        f'xml:lang="en"><siteinfo><sitename>Wikipedia</sitename></siteinfo>{body}</mediawiki>'
    )
    path.write_bytes(bz2.compress(xml.encode("utf-8")))


def test_wikipedia_dump_loads_the_article_texts(tmp_path: Path) -> None:
    dump = tmp_path / "enwiki-latest-pages-articles1.xml.bz2"
    write_dump(dump)
    corpus = load_corpus(dump)
    text = corpus.tokens.tobytes().decode("utf-8")
    assert "'''Alan Turing''' was a [[mathematician]]." in text
    assert "first program & notes" in text
    assert "REDIRECT" not in text and "<title>" not in text
    assert len(load_corpus(dump, max_bytes=20)) == 20


def test_text_file_and_folder_corpora(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("second file " * 10)
    (tmp_path / "a.txt").write_text("first file " * 10)
    folder = load_corpus(tmp_path).tokens.tobytes()
    assert folder.startswith(b"first file") and b"second file" in folder
    assert load_corpus(tmp_path / "a.txt").tokens.tobytes() == b"first file " * 10
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_corpus(tmp_path / "missing.txt")


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is not None, reason="pyarrow installed")
def test_datasets_cache_without_pyarrow_says_what_to_install(tmp_path: Path) -> None:
    (tmp_path / "wikipedia-train-00000-of-00001.arrow").write_bytes(b"not read")
    with pytest.raises(ImportError, match="pip install pyarrow"):
        load_corpus(tmp_path)


# --- RNG states --------------------------------------------------------------------------


def test_rng_states_round_trip_through_flat_tensors_and_json() -> None:
    state = capture_rng_state()
    tensors, values = flatten_state(state)
    assert all(isinstance(t, torch.Tensor) for t in tensors.values())
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(5), np.random.rand(7), random.random()
    restore_rng_state(unflatten_state({k: v.clone() for k, v in tensors.items()}, values))
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0])
    assert np.array_equal(expected[1], again[1])
    assert expected[2] == again[2]


# --- trainer -----------------------------------------------------------------------------


def train(config: TrainerConfig, steps: int) -> Trainer:
    trainer = Trainer(config)
    for _ in range(steps):
        trainer.step()
    return trainer


def test_training_is_bitwise_deterministic_and_learns() -> None:
    torch.set_num_threads(1)
    first, second = train(tiny_config(), 8), train(tiny_config(), 8)
    assert state_digest(first.model_state()) == state_digest(second.model_state())
    assert state_digest(train(tiny_config(seed=1), 8).model_state()) != state_digest(
        first.model_state()
    )
    losses = [Trainer(tiny_config()).step().loss, first.step().loss]
    assert losses[1] < losses[0]


def test_restored_state_continues_bitwise_like_the_uninterrupted_run() -> None:
    torch.set_num_threads(1)
    uninterrupted = train(tiny_config(), 8)
    interrupted = train(tiny_config(), 3)
    state = interrupted.state()
    assert state["iteration"] == 3 and state["data"]["position"] == 3
    # What an engine gives back: plain copies, flattened to raw tensors and JSON and rebuilt.
    tensors, values = flatten_state(state)
    copy = unflatten_state({k: v.detach().clone() for k, v in tensors.items()}, values)
    for _ in range(2):
        interrupted.step()  # the live state moves on; the copy must not
    resumed = Trainer(tiny_config())
    resumed.load_state(copy)
    while resumed.iteration < 8:
        resumed.step()
    assert state_digest(resumed.model_state()) == state_digest(uninterrupted.model_state())


def test_a_state_restored_in_place_loads_without_a_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the engine's ``restore(into=trainer.state)`` hands back: the checkpoint copied into
    the live tensors, which are the state's tensors. Loading it copies nothing (no self-copy of
    the model, no clone) and goes through none of torch's loads (only the optimizer's
    hyperparameters are set), and the run continues bitwise like the uninterrupted one."""
    torch.set_num_threads(1)
    uninterrupted = train(tiny_config(), 8)
    trainer = train(tiny_config(), 3)
    tensors, values = flatten_state(trainer.state())
    saved = {k: v.detach().clone() for k, v in tensors.items()}
    for _ in range(2):
        trainer.step()  # the live state moves on, then the checkpoint is restored into it
    live, _ = flatten_state(trainer.state())
    pointers = {n: t.data_ptr() for n, t in live.items() if not n.startswith("rng/")}
    with torch.no_grad():
        for name, tensor in saved.items():
            live[name].copy_(tensor)
    restored = unflatten_state(dict(live), values)
    # A hyperparameter changed since the checkpoint: the load must set it back.
    trainer.optimizer.param_groups[0]["weight_decay"] = 0.5
    calls = _count_general_loads(monkeypatch)
    trainer.load_state(restored)
    assert calls == []
    assert trainer.optimizer.param_groups[0]["weight_decay"] == tiny_config().weight_decay
    after, _ = flatten_state(trainer.state())
    assert {n: t.data_ptr() for n, t in after.items() if not n.startswith("rng/")} == pointers
    while trainer.iteration < 8:
        trainer.step()
    assert state_digest(trainer.model_state()) == state_digest(uninterrupted.model_state())


def _count_general_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every call of the general load path's three ``torch.distributed.checkpoint``
    functions (``real.trainer.training_state``)."""
    import real.trainer.training_state as training_state

    calls: list[str] = []
    for name in ("get_model_state_dict", "set_model_state_dict", "set_optimizer_state_dict"):
        real = getattr(training_state, name)
        monkeypatch.setattr(
            training_state,
            name,
            lambda *a, _name=name, _real=real, **k: calls.append(_name) or _real(*a, **k),
        )
    return calls


def test_a_state_with_copied_optimizer_tensors_loads_through_the_general_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only a state restored wholly into the live tensors skips torch's load: model tensors
    in place but the optimizer's moments elsewhere (or a per-parameter entry that differs)
    go through ``set_optimizer_state_dict``, and the run still continues bitwise."""
    torch.set_num_threads(1)
    uninterrupted = train(tiny_config(), 8)
    trainer = train(tiny_config(), 3)
    state = trainer.state()
    saved = {
        "model": {k: v.detach().clone() for k, v in state["model"].items()},
        "optim": clone_state(state["optim"]),
    }
    for _ in range(2):
        trainer.step()
    live = trainer.state()
    with torch.no_grad():
        for name, tensor in saved["model"].items():
            live["model"][name].copy_(tensor)
    restored = {**state, "model": live["model"], "optim": saved["optim"]}
    calls = _count_general_loads(monkeypatch)
    trainer.load_state(restored)
    assert "set_optimizer_state_dict" in calls and "set_model_state_dict" not in calls
    monkeypatch.undo()
    while trainer.iteration < 8:
        trainer.step()
    assert state_digest(trainer.model_state()) == state_digest(uninterrupted.model_state())


def _restore_in_place(trainer: Trainer, saved: dict[str, torch.Tensor], values: object) -> None:
    """What the engine's ``restore(into=trainer.state)`` then the trainer's load do."""
    live, _ = flatten_state(trainer.state())
    with torch.no_grad():
        for name, tensor in saved.items():
            live[name].copy_(tensor)
    trainer.load_state(unflatten_state(dict(live), values))  # type: ignore[arg-type]


def test_a_prepared_spare_restores_without_a_first_optimizer_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A warm spare builds its model and optimizer state while it waits (``Trainer.prepare``):
    the weights are the seed's, the moments exist, and taking a rank then restoring costs no
    optimizer step (a trainer built on the spot takes one, on the restore's path, for
    ``get_state_dict`` to create the moments). The restored run continues bitwise like the
    uninterrupted one."""
    torch.set_num_threads(1)
    config = tiny_config()
    prepared = Trainer.prepare(config)
    fresh = GPT(TINY, seed=config.seed)
    assert state_digest(prepared.module.state_dict()) == state_digest(fresh.state_dict())
    moments = list(prepared.optimizer.state.values())
    assert len(moments) == len(list(fresh.parameters()))
    assert all(not m["exp_avg"].any() and not m["exp_avg_sq"].any() for m in moments)
    assert all(p.grad is None for p in prepared.module.parameters())

    uninterrupted = train(config, 8)
    tensors, values = flatten_state(train(config, 3).state())
    saved = {k: v.detach().clone() for k, v in tensors.items()}
    steps: list[str] = []
    original_step = torch.optim.AdamW.step

    def counted(self: torch.optim.AdamW, *args: object, **kwargs: object) -> object:
        steps.append("step")
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", counted)
    spare = Trainer(config, restoring=True, prepared=prepared)
    assert spare.optimizer is prepared.optimizer and spare.module is prepared.module
    _restore_in_place(spare, saved, values)
    assert steps == []
    on_the_spot = Trainer(config, restoring=True)
    _restore_in_place(on_the_spot, saved, values)
    assert steps == ["step"]  # what the prepared spare saved
    monkeypatch.undo()
    for resumed in (spare, on_the_spot):
        while resumed.iteration < 8:
            resumed.step()
        assert state_digest(resumed.model_state()) == state_digest(uninterrupted.model_state())


def test_a_prepared_trainer_that_starts_over_trains_as_a_fresh_one() -> None:
    """A warm process whose first attempt starts from scratch: the prepared optimizer's
    allocated moments (and its step count) would change the first updates, so it gets a fresh
    optimizer, and trains bitwise like a trainer built on the spot."""
    torch.set_num_threads(1)
    prepared = Trainer.prepare(tiny_config())
    trainer = Trainer(tiny_config(), prepared=prepared)
    assert trainer.module is prepared.module and trainer.optimizer is not prepared.optimizer
    assert not trainer.optimizer.state
    while trainer.iteration < 8:
        trainer.step()
    on_the_spot = train(tiny_config(), 8)
    assert state_digest(trainer.model_state()) == state_digest(on_the_spot.model_state())


def test_only_a_ddp_trainer_can_be_prepared() -> None:
    with pytest.raises(ValueError, match="DDP"):
        Trainer.prepare(tiny_config(parallelism="zero3"))
    with pytest.raises(ValueError, match="DDP only"):
        Trainer(tiny_config(parallelism="zero3"), prepared=Trainer.prepare(tiny_config()))


def test_load_training_state_keeps_live_tensors_and_clones_the_rest() -> None:
    from real.trainer.training_state import clone_state, load_training_state, training_state

    torch.set_num_threads(1)
    trainer = train(tiny_config(), 2)
    live = training_state(trainer.model, trainer.optimizer, clone=False)
    kept = clone_state(live, live=live)
    fresh = clone_state(live)
    first = next(iter(live["model"]))
    assert kept["model"][first].data_ptr() == live["model"][first].data_ptr()
    assert fresh["model"][first].data_ptr() != live["model"][first].data_ptr()
    before = state_digest(trainer.model_state())
    load_training_state(trainer.model, trainer.optimizer, live)  # the live state: a no-op
    assert state_digest(trainer.model_state()) == before
    moments = [s["exp_avg"].data_ptr() for s in trainer.optimizer.state.values()]
    assert moments == [s["exp_avg"].data_ptr() for s in live["optim"]["state"].values()]


def test_load_state_rejects_another_schedule() -> None:
    state = train(tiny_config(), 1).state()
    with pytest.raises(ValueError, match="schedule"):
        Trainer(tiny_config(iterations=9)).load_state(state)


# --- weights files -----------------------------------------------------------------------


def test_weights_file_round_trips_and_detects_damage(tmp_path: Path) -> None:
    tensors = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.tensor(3)}
    manifest = write_tensors(tmp_path / "w.bin", tensors, extra={"iteration": 4})
    back, read_manifest = read_tensors(tmp_path / "w.bin")
    assert read_manifest == manifest and manifest["iteration"] == 4
    assert all(torch.equal(back[k], tensors[k]) for k in tensors)
    assert manifest["digest"] == state_digest(tensors)
    raw = bytearray((tmp_path / "w.bin").read_bytes())
    raw[0] ^= 1
    (tmp_path / "w.bin").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="damaged"):
        read_tensors(tmp_path / "w.bin")


REWRAP_RANK = """
import datetime, sys, torch, torch.distributed as dist
from real.trainer.workload.model import GPTConfig
from real.trainer.workload.trainer import Trainer, TrainerConfig
rank, world, address = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
dist.init_process_group("gloo", init_method=address, rank=rank, world_size=world,
                        timeout=datetime.timedelta(seconds=60))
torch.set_num_threads(1)
config = TrainerConfig(model=GPTConfig(2, 32, 4, 32), iterations=4, batch_size_per_rank=2)
trainer = Trainer(config, rank=rank, world_size=2)
weight = next(iter(trainer.module.parameters()))
initial = weight.detach().clone()
def moved():
    return round(float((weight.detach() - initial).mean()), 4)
with torch.no_grad():  # ranks whose weights differ, as a survivor's differ from a spare's
    weight.add_(rank + 1.0)
trainer.detach()
trainer.rejoin()  # a restore follows: no broadcast, each rank keeps its own weights
kept = moved()
trainer.detach()
trainer.model = trainer._wrap_ddp(sync=True)  # a first start's wrap: rank 0's everywhere
print("rejoin", kept, "synced", moved(), flush=True)
# Modules first, then the groups: a DDP module still holding its group when the interpreter
# shuts down can abort it (docs/training.md, "Leaving").
del trainer, weight
from real.runtime.procgroup import leave_process_group
leave_process_group(together=True)
"""


def test_a_rejoin_keeps_each_ranks_weights_where_a_first_wrap_broadcasts(
    tmp_path: Path,
) -> None:
    """DDP's broadcast of rank 0's parameters is skipped when a restore follows (a survivor's
    rejoin, a spare whose plan restores): each rank keeps its own weights, for the restore
    to overwrite; the first start's wrap still gives every rank rank 0's."""
    for rank, output in enumerate(rank_outputs(rank_scripts(tmp_path, REWRAP_RANK, 2), 180)):
        assert output.split() == ["rejoin", f"{rank + 1.0}", "synced", "1.0"], output


LAYOUT_RANK = """
import datetime, json, sys, torch, torch.distributed as dist
from torch import nn
from real.trainer.workload.model import GPTConfig
from real.trainer.workload.trainer import Trainer, TrainerConfig
rank, world, address = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
dist.init_process_group("gloo", init_method=address, rank=rank, world_size=world,
                        timeout=datetime.timedelta(seconds=60))
torch.set_num_threads(1)
config = TrainerConfig(model=GPTConfig(2, 32, 4, 32), iterations=4, batch_size_per_rank=2,
                       bucket_cap_mb=0.02)
def layout(warm):
    # The bucket layout of the first real backward: each bucket's parameter names.
    trainer = Trainer(config, rank=rank, world_size=world)  # wraps and settles
    if warm != "trainer":  # rewrapped by hand: warmed on a blank batch of WARM tokens, or not
        trainer.model = nn.parallel.DistributedDataParallel(
            trainer.module, bucket_cap_mb=config.bucket_cap_mb)
        if warm:
            blank = torch.zeros(1, warm, dtype=torch.long)
            trainer.model(blank, blank).backward()
            for parameter in trainer.model.parameters():
                parameter.grad = None
    names = {id(p): n for n, p in trainer.module.named_parameters()}
    seen = []
    def record(state, bucket):
        seen.append([names[id(p)] for p in bucket.parameters()])
        work = dist.all_reduce(bucket.buffer(), async_op=True)
        return work.get_future().then(lambda f: f.value()[0])
    trainer.model.register_comm_hook(None, record)
    trainer.step()
    return seen
print(json.dumps({str(w): layout(w) for w in ("trainer", 32, 0)}), flush=True)
from real.runtime.procgroup import leave_process_group
leave_process_group(together=True)
"""


def test_the_one_token_warm_up_gives_ddp_the_buckets_a_full_context_does(tmp_path: Path) -> None:
    """DDP regroups its buckets after its first backward, in the order gradients became ready;
    the trainer's warm-up on a one-token blank batch (``Trainer._settle_ddp_buckets``) gives
    the first real backward the same buckets as a warm-up on a full context, and other
    buckets than no warm-up at all (so the comparison can tell)."""
    import json

    for output in rank_outputs(rank_scripts(tmp_path, LAYOUT_RANK, 2), 180):
        layouts = json.loads(output)
        assert len(layouts["trainer"]) > 1  # several buckets, else the order cannot differ
        assert layouts["trainer"] == layouts["32"]
        assert layouts["trainer"] != layouts["0"]
