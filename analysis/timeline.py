"""Recovery timelines: what every node was doing, drawn as a Gantt chart and animated.

A run's events are turned into *spans* (node, start, end, state) and *markers* (node, time,
kind). States, in the order a failure's recovery passes through them:

- ``startup``: processes starting and the process group forming before the first iteration;
- ``training``: iterations run (``recompute`` when they redo progress lost to a failure);
- ``down``: a failed node, from the failure until its replacement is ready (hardware) or the
  job has stopped (software);
- ``detection`` (failure injected -> detected), ``stop`` (detected -> trainers stopped),
  ``replacement`` (waiting for a standby node), ``waiting`` (any other gap before restart),
  ``restart`` (restart begins -> process group ready), ``retrieval`` (-> state restored and
  training resumed).

Markers: ``checkpoint`` (in-memory checkpoint committed), ``persist`` (a checkpoint reached
persistent storage), ``failure`` and ``resume``. The simulator logs only the iterations around
failures (it jumps over uneventful ones), so its training spans come from the gaps between
recoveries rather than from ``iteration_end`` events; both faces give the same picture.

The recovery phases come from the event chain of each failure (``details["failure"]``), the
same events ``shared.summary`` measures them from, so the picture and the tables agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from analysis.results import RunResult
from shared.events import Event

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

STATE_COLORS: dict[str, str] = {
    "startup": "#c7c7c7",
    "training": "#4c72b0",
    "recompute": "#a1c9f4",
    "down": "#222222",
    "detection": "#e8a33d",
    "stop": "#dd8452",
    "replacement": "#8172b3",
    "waiting": "#e5e5e5",
    "restart": "#937860",
    "retrieval": "#55a868",
}
"""Colour of every state (seaborn's deep/colorblind palettes)."""

STATE_ORDER = tuple(STATE_COLORS)


@dataclass(frozen=True)
class Span:
    """A node in one state from ``start`` to ``end`` (s)."""

    node: int
    start: float
    end: float
    state: str


@dataclass(frozen=True)
class Marker:
    """A point event on a node's row: checkpoint, persist, failure or resume."""

    node: int
    time: float
    kind: str


@dataclass(frozen=True)
class Recovery:
    """The times (s) of one failure's recovery chain; a missing event takes the previous time.

    Attributes:
        index: the failure index.
        kind: software, hardware, ...
        nodes: the failed nodes.
        tier: where the state came from (local, peer, persistent).
        injected, detected, stopped, ready, restart, group_ready, restored, resumed: times.
        recompute_end: when the progress lost to this failure had been recomputed.
    """

    index: int
    kind: str
    nodes: tuple[int, ...]
    tier: str
    injected: float
    detected: float
    stopped: float
    ready: float | None
    restart: float
    group_ready: float
    restored: float
    resumed: float
    recompute_end: float


@dataclass(frozen=True)
class Timeline:
    """Everything the Gantt chart draws for one run."""

    title: str
    nodes: tuple[int, ...]
    start: float
    end: float
    spans: tuple[Span, ...]
    markers: tuple[Marker, ...]
    recoveries: tuple[Recovery, ...]

    def default_window(self) -> tuple[float, float]:
        """The part worth showing: the whole run, or up to a little after the last recovery
        when the run goes on much longer (a simulated day after a few seconds of failures)."""
        if not self.recoveries:
            return self.start, self.end
        last = max(r.recompute_end for r in self.recoveries)
        span = last - self.start
        return self.start, min(self.end, last + max(0.15 * span, 1e-9))


def _chains(events: Sequence[Event]) -> dict[int, dict[str, Event]]:
    chains: dict[int, dict[str, Event]] = {}
    for event in events:
        index = event.details.get("failure")
        if not isinstance(index, int) or isinstance(index, bool):
            continue
        chain = chains.setdefault(index, {})
        if event.kind == "state_restored" or event.kind not in chain:
            chain[event.kind] = event
    return chains


def _recoveries(run: RunResult) -> list[Recovery]:
    records = {f.index: f for f in run.summary.failures}
    out = []
    for index, chain in sorted(_chains(run.events).items()):
        injected_event = chain.get("failure_injected")
        if injected_event is None:
            continue
        t0 = injected_event.time_s

        def at(kind: str, default: float, chain: dict[str, Event] = chain) -> float:
            event = chain.get(kind)
            return max(event.time_s, default) if event is not None else default

        detected = at("failure_detected", t0)
        stopped = at("training_stopped", detected)
        ready = at("replacement_ready", stopped) if "replacement_ready" in chain else None
        restart = at("restart_begin", ready if ready is not None else stopped)
        group_ready = at("process_group_ready", restart)
        restored = at("state_restored", group_ready)
        resumed = at("training_resumed", restored)
        record = records.get(index)
        nodes_value = injected_event.details.get("nodes")
        if isinstance(nodes_value, list):
            nodes = tuple(int(n) for n in nodes_value)
        elif record is not None:
            nodes = record.nodes
        else:
            nodes = () if injected_event.node is None else (injected_event.node,)
        lost = record.lost_progress_s if record is not None else 0.0
        tier_event = chain.get("state_restored")
        tier = str(tier_event.details.get("tier", "?")) if tier_event is not None else "none"
        out.append(
            Recovery(
                index,
                str(injected_event.details.get("failure_kind", record.kind if record else "?")),
                nodes,
                tier,
                t0,
                detected,
                stopped,
                ready,
                restart,
                group_ready,
                restored,
                resumed,
                resumed + lost,
            )
        )
    return out


def run_nodes(run: RunResult) -> tuple[int, ...]:
    """The nodes of a run: those its events and failures name, and 0..N-1 when it says N."""
    seen = {e.node for e in run.events if e.node is not None}
    count = run.summary.extra.get("nodes")
    if isinstance(count, int) and not isinstance(count, bool):
        seen.update(range(count))
    for failure in run.summary.failures:
        seen.update(failure.nodes)
    return tuple(sorted(n for n in seen if n is not None)) or (0,)


def _subtract(
    start: float, end: float, holes: Sequence[tuple[float, float]]
) -> list[tuple[float, float]]:
    pieces = [(start, end)]
    for hole_start, hole_end in holes:
        next_pieces = []
        for a, b in pieces:
            if hole_end <= a or hole_start >= b:
                next_pieces.append((a, b))
                continue
            if hole_start > a:
                next_pieces.append((a, hole_start))
            if hole_end < b:
                next_pieces.append((hole_end, b))
        pieces = next_pieces
    return [(a, b) for a, b in pieces if b > a]


def build_timeline(run: RunResult) -> Timeline:
    """Spans and markers of every node of a run."""
    events = run.events
    nodes = run_nodes(run)
    starts = [e.time_s for e in events if e.kind == "run_started"]
    run_start = min(starts) if starts else (events[0].time_s if events else 0.0)
    finished = [e.time_s for e in events if e.kind == "run_finished"]
    run_end = max(finished) if finished else (events[-1].time_s if events else run_start)
    if run_end <= run_start:
        run_end = run_start + max(run.summary.duration_s, 1.0)
    first_iteration = next((e for e in events if e.kind == "iteration_end"), None)
    # A face that logs its start-up (the real harness: processes, process group) trains from
    # its first iteration on; one that does not (the simulator) trains from the start.
    logs_startup = any(
        e.kind == "process_group_ready" and "failure" not in e.details for e in events
    )
    if first_iteration is not None and logs_startup:
        duration = first_iteration.details.get("duration_s")
        took = float(duration) if isinstance(duration, int | float) else 0.0
        train_start = max(run_start, first_iteration.time_s - took)
    else:
        train_start = run_start
    recoveries = _recoveries(run)
    spans: list[Span] = []
    markers: list[Marker] = []
    # Recomputation ends at the next failure at the latest.
    recompute_ends = {
        r.index: min(
            [r.recompute_end, run_end, *(x.injected for x in recoveries if x.injected > r.resumed)]
        )
        for r in recoveries
    }
    holes = [(r.injected, max(r.resumed, recompute_ends[r.index])) for r in recoveries]
    for node in nodes:
        if train_start > run_start:
            spans.append(Span(node, run_start, train_start, "startup"))
        for a, b in _subtract(train_start, run_end, holes):
            spans.append(Span(node, a, b, "training"))
    for r in recoveries:
        recompute_end = recompute_ends[r.index]
        for node in nodes:
            failed = node in r.nodes
            pieces: list[tuple[float, float, str]] = []
            if failed:
                back = r.ready if r.ready is not None else r.stopped
                pieces.append((r.injected, back, "down"))
                pieces.append((back, r.restart, "waiting"))
            else:
                pieces.append((r.injected, r.detected, "detection"))
                pieces.append((r.detected, r.stopped, "stop"))
                if r.ready is not None:
                    pieces.append((r.stopped, r.ready, "replacement"))
                pieces.append((r.ready or r.stopped, r.restart, "waiting"))
            pieces.append((r.restart, r.group_ready, "restart"))
            pieces.append((r.group_ready, r.resumed, "retrieval"))
            pieces.append((r.resumed, recompute_end, "recompute"))
            spans.extend(Span(node, a, b, s) for a, b, s in pieces if b > a)
            if failed:
                markers.append(Marker(node, r.injected, "failure"))
            markers.append(Marker(node, r.resumed, "resume"))
    for event in events:
        kind = {"ckpt_committed": "checkpoint", "persist_done": "persist"}.get(event.kind)
        if kind is None:
            continue
        targets = nodes if event.node is None else (event.node,)
        markers.extend(Marker(node, event.time_s, kind) for node in targets)
    title = f"{run.source} · {run.strategy} · {run.scenario}"
    return Timeline(
        title, nodes, run_start, run_end, tuple(spans), tuple(markers), tuple(recoveries)
    )


MARKER_STYLE: dict[str, dict[str, object]] = {
    "checkpoint": {"marker": "|", "color": "#1b1b1b", "s": 30, "linewidths": 0.6},
    "persist": {"marker": "D", "color": "#c44e52", "s": 16},
    "failure": {"marker": "X", "color": "#c44e52", "s": 90, "edgecolors": "white"},
    "resume": {"marker": ">", "color": "#2ca02c", "s": 50, "edgecolors": "white"},
}
MARKER_LABELS = {
    "checkpoint": "checkpoint committed",
    "persist": "persisted to storage",
    "failure": "failure",
    "resume": "training resumed",
}
_MAX_MARKERS_PER_ROW = 300


def draw_gantt(
    ax: Axes,
    timeline: Timeline,
    window: tuple[float, float] | None = None,
    *,
    now: float | None = None,
    legend: bool = True,
    steady_legend: bool = False,
) -> None:
    """Draw a timeline on ``ax``: one row per node, time (s) across.

    Args:
        ax: the axes.
        timeline: from ``build_timeline``.
        window: (start, end) in s; default ``timeline.default_window()``.
        now: draw a vertical "now" line (the animation) and hide what comes after it.
        legend: add the legend of states and markers.
        steady_legend: list every state and marker of the window, also those not drawn yet
            (keeps an animation's legend still).
    """
    from matplotlib.patches import Patch

    lo, hi = window or timeline.default_window()
    shown_end = hi if now is None else min(hi, now)
    rows = {node: i for i, node in enumerate(timeline.nodes)}
    used: set[str] = set()
    for span in timeline.spans:
        a, b = max(span.start, lo), min(span.end, shown_end)
        if b <= a:
            continue
        used.add(span.state)
        ax.broken_barh(
            [(a, b - a)],
            (rows[span.node] - 0.38, 0.76),
            facecolors=STATE_COLORS[span.state],
            edgecolor="none",
            hatch="//" if span.state == "recompute" else None,
        )
    used_markers: set[str] = set()
    for kind in ("checkpoint", "persist", "failure", "resume"):
        xs: list[float] = []
        ys: list[float] = []
        for node, row in rows.items():
            times = [
                m.time
                for m in timeline.markers
                if m.kind == kind and m.node == node and lo <= m.time <= shown_end
            ]
            step = max(1, len(times) // _MAX_MARKERS_PER_ROW)
            times = times[::step]
            offset = 0.3 if kind in ("checkpoint", "persist") else 0.0
            xs.extend(times)
            ys.extend([row + offset] * len(times))
        if xs:
            used_markers.add(kind)
            ax.scatter(xs, ys, zorder=3, **MARKER_STYLE[kind])  # type: ignore[arg-type]
    if now is not None and lo <= now <= hi:
        ax.axvline(now, color="#c44e52", linewidth=1.2, linestyle="--")
    ax.set_xlim(lo, hi)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_yticks(range(len(rows)), [f"node {n}" for n in timeline.nodes])
    ax.set_xlabel("time since run start (s)")
    ax.set_title(timeline.title)
    ax.grid(axis="x", alpha=0.3)
    if steady_legend:
        used |= {s.state for s in timeline.spans if s.end > lo and s.start < hi}
        used_markers |= {m.kind for m in timeline.markers if lo <= m.time <= hi}
    if legend:
        handles: list[object] = [
            Patch(facecolor=STATE_COLORS[s], label=s, hatch="//" if s == "recompute" else None)
            for s in STATE_ORDER
            if s in used
        ]
        from matplotlib.lines import Line2D

        for kind in ("checkpoint", "persist", "failure", "resume"):
            if kind in used_markers:
                style = MARKER_STYLE[kind]
                handles.append(
                    Line2D(
                        [],
                        [],
                        linestyle="none",
                        marker=str(style["marker"]),
                        color=str(style["color"]),
                        markersize=8,
                        label=MARKER_LABELS[kind],
                    )
                )
        ax.legend(
            handles=handles,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            fontsize=8,
            frameon=False,
        )


def plot_timelines(runs: Sequence[RunResult]) -> Figure:
    """Gantt charts of several runs (simulated and measured side by side), one row each."""
    import matplotlib.pyplot as plt

    count = max(1, len(runs))
    columns = 2 if count > 1 else 1
    rows = (count + columns - 1) // columns
    timelines = [build_timeline(run) for run in runs]
    height = max(2.2, 0.45 * max((len(t.nodes) for t in timelines), default=4) + 1.3)
    fig, axes = plt.subplots(rows, columns, figsize=(7.5 * columns, height * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= len(timelines):
            ax.axis("off")
            continue
        timeline = timelines[i]
        lo, hi = timeline.default_window()
        draw_gantt(ax, timeline, (lo, hi), legend=(i % columns == columns - 1 or count == 1))
        if hi < timeline.end:
            ax.set_title(
                f"{timeline.title}\n(shown {lo:.3g}-{hi:.3g} s of a {timeline.end:.3g} s run)"
            )
    fig.tight_layout()
    return fig


def failure_window(timeline: Timeline, index: int | None = None) -> tuple[Recovery, float, float]:
    """The recovery to animate (``index`` or the first) and a window around it (s)."""
    if not timeline.recoveries:
        raise ValueError(f"{timeline.title}: the run has no failure to animate")
    chosen = (
        timeline.recoveries[0]
        if index is None
        else next((r for r in timeline.recoveries if r.index == index), None)
    )
    if chosen is None:
        known = [r.index for r in timeline.recoveries]
        raise ValueError(f"no failure {index} in {timeline.title}; failures: {known}")
    length = max(chosen.recompute_end - chosen.injected, 1e-6)
    lo = max(timeline.start, chosen.injected - 0.25 * length)
    hi = min(timeline.end, chosen.recompute_end + 0.15 * length)
    return chosen, lo, hi


def phase_at(recovery: Recovery, now: float) -> str:
    """What the recovery is doing at ``now`` (s since run start), in a few words."""
    steps = [
        (recovery.injected, "training"),
        (recovery.injected, f"{recovery.kind} failure of node(s) {list(recovery.nodes)}"),
        (recovery.detected, "detected; stopping the surviving trainers"),
        (recovery.stopped, "waiting for a replacement node"),
        (recovery.restart, "restarting trainers, forming the process group"),
        (recovery.group_ready, f"retrieving state ({recovery.tier})"),
        (recovery.resumed, "training resumed (recomputing lost progress)"),
        (recovery.recompute_end, "training"),
    ]
    if recovery.ready is None:
        steps = [s for s in steps if not s[1].startswith("waiting")]
    text = steps[0][1]
    for time, label in steps:
        if now >= time:
            text = label
    return text


def animate_failure(
    run: RunResult,
    path: str | Path,
    *,
    index: int | None = None,
    frames: int = 36,
    fps: int = 8,
    dpi: int = 80,
) -> Path:
    """Write an animated GIF of one failure and its recovery (Pillow writer).

    Args:
        run: the run.
        path: where the GIF goes.
        index: the failure (default: the first).
        frames: number of frames (a sweep of a "now" line across the window).
        fps: frames per second.
        dpi: resolution; 80 keeps a 40-frame GIF well under a megabyte.

    Raises:
        ValueError: when the run has no such failure, or ``frames`` < 1.
    """
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Rectangle
    from PIL import Image

    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    timeline = build_timeline(run)
    recovery, lo, hi = failure_window(timeline, index)
    height = 0.45 * len(timeline.nodes) + 1.6
    fig, ax = plt.subplots(figsize=(8.5, height), dpi=dpi)
    # The chart is drawn once and kept as a background; each frame restores it and draws only
    # what moves (blitting): a cover over the future, the "now" line and the heading's clock.
    # Redrawing the whole chart per frame (matplotlib's FuncAnimation saves that way) took
    # 0.4-0.5 s a frame, most of the main job's report.
    draw_gantt(ax, timeline, (lo, hi), steady_legend=True)
    ax.set_title("")
    top = 1.0 - 0.12 / height  # two heading lines in the top 0.5 inch (tight_layout leaves it)
    fig.text(0.5, top, f"{timeline.title} · failure {recovery.index}", ha="center", fontsize=10)
    clock = fig.text(0.5, top - 0.2 / height, "", ha="center", fontsize=10, animated=True)
    cover = Rectangle((lo, -1.0), hi - lo, len(timeline.nodes) + 1.0)
    cover.set(facecolor="white", edgecolor="none", animated=True)
    ax.add_patch(cover)
    line = ax.axvline(lo, color="#c44e52", linewidth=1.2, linestyle="--", animated=True)
    fig.tight_layout(rect=(0.0, 0.0, 1.0, 1.0 - 0.5 / height))
    fig.canvas.draw()
    background = fig.canvas.copy_from_bbox(fig.bbox)  # type: ignore[attr-defined]
    images = []
    try:
        for frame in range(frames):
            now = lo + (hi - lo) * frame / max(frames - 1, 1)
            fig.canvas.restore_region(background)  # type: ignore[attr-defined]
            cover.set_x(now)
            cover.set_width(max(0.0, hi - now))
            line.set_xdata([now, now])
            clock.set_text(f"t = {now - recovery.injected:+.2f} s: {phase_at(recovery, now)}")
            for artist in (cover, *ax.spines.values(), line):
                ax.draw_artist(artist)
            fig.draw_artist(clock)
            rgba = np.asarray(fig.canvas.buffer_rgba())  # type: ignore[attr-defined]
            images.append(Image.fromarray(rgba[:, :, :3].copy()).quantize(colors=128))
    finally:
        plt.close(fig)
    out = Path(path)
    images[0].save(
        out,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=round(1000 / fps),
        loop=0,
    )
    return out
