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

Big runs stay cheap and readable: a timeline keeps at most ``MAX_NODES_SHOWN`` rows (the nodes
that failed, in the order of their first failure, then the lowest ids; the title says how many
of how many are shown), and ``draw_gantt`` draws one bar collection per row and state, with the
phases narrower than a pixel merged into one-pixel marks (``pixel_bars``). So drawing costs
rows x pixels, whatever the number of failures and events.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from analysis.results import RunResult
from shared.events import Event
from shared.summary import FailureRecord, merged_spans, with_failure_anchors

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

MAX_NODES_SHOWN = 16
"""Most node rows a timeline keeps. At 0.45 inch a row, 16 rows make a chart of about 8.5
inches, which still fits a report page beside its twin; they hold every node of the quickstart
(4) and of the 8- and 16-node sweeps, and in a bigger run the failed nodes of its first
failures beside healthy ones to compare with. More rows would not be read, only drawn."""

MAX_RECOVERIES_SHOWN = 16
"""Most failures the default window of a timeline holds (``Timeline.default_window``): as
many as the rows, which are the nodes of the first failures."""


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
    node_count: int = 0
    """How many nodes the run has; 0 means just those of ``nodes`` (none left out)."""

    @property
    def hidden_nodes(self) -> int:
        """How many of the run's nodes have no row (see ``MAX_NODES_SHOWN``)."""
        return max(0, self.node_count - len(self.nodes))

    def rows_note(self) -> str:
        """The sentence a figure shows when rows are left out; empty when none are."""
        if not self.hidden_nodes:
            return ""
        return (
            f"{len(self.nodes)} of {self.node_count} nodes shown: "
            "those that failed, then the lowest ids"
        )

    def default_window(self) -> tuple[float, float]:
        """The part worth showing: the whole run, or up to a little after the last recovery
        when the run goes on much longer (a simulated day after a few seconds of failures).
        With more than ``MAX_RECOVERIES_SHOWN`` failures, up to a little after the last of
        the first ones: a month of 450 failures on 500 pixels is a failure per pixel, where
        no recovery can be told from the next, while the first 16 fill the width with
        recoveries a few pixels wide; and the failed nodes given rows are those of the first
        failures (``choose_nodes``), so their failures are in the window."""
        if not self.recoveries:
            return self.start, self.end
        first = sorted(self.recoveries, key=lambda r: (r.injected, r.index))
        last = max(r.recompute_end for r in first[:MAX_RECOVERIES_SHOWN])
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
    # A failure nothing injected (a real cluster's) starts where the summary starts it.
    for index, chain in sorted(_chains(with_failure_anchors(list(run.events))).items()):
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


def choose_nodes(
    nodes: Sequence[int],
    recoveries: Sequence[Recovery],
    limit: int | None = MAX_NODES_SHOWN,
    *,
    failures: Sequence[FailureRecord] = (),
    focus: int | None = None,
) -> tuple[int, ...]:
    """The nodes that get a row, in id order: all of them when they fit in ``limit``, else
    those that failed (in the order of their first failure; the nodes of failure ``focus``
    before any), then the lowest ids. Deterministic: the same run always gives the same rows.

    Args:
        nodes: every node of the run (``run_nodes``).
        recoveries: the run's recoveries (their failed nodes and injection times).
        limit: most rows; None for no limit.
        failures: the summary's failures, for those whose event chain is missing.
        focus: a failure index whose nodes come first (the one an animation shows).
    """
    if limit is None or len(nodes) <= limit:
        return tuple(nodes)
    by_time = [(r.injected, r.index, r.nodes) for r in recoveries]
    known = {r.index for r in recoveries}
    by_time += [(f.time_s, f.index, f.nodes) for f in failures if f.index not in known]
    by_time.sort(key=lambda item: (item[1] != focus, item[0], item[1]))
    ordered = [n for _, _, failed in by_time for n in failed]
    ordered += sorted(nodes)
    chosen: list[int] = []
    present = set(nodes)
    for node in ordered:
        if node in present and node not in chosen:
            chosen.append(node)
            if len(chosen) == max(limit, 1):
                break
    return tuple(sorted(chosen))


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


def build_timeline(
    run: RunResult, *, max_nodes: int | None = MAX_NODES_SHOWN, focus: int | None = None
) -> Timeline:
    """Spans and markers of the nodes of a run that get a row (``choose_nodes``).

    Only the rows kept are built: a 1000-node run with hundreds of failures would otherwise
    make millions of spans and markers that no figure shows.

    Args:
        run: the run.
        max_nodes: most rows (``MAX_NODES_SHOWN``); None keeps every node.
        focus: a failure index whose nodes get rows first (an animation's failure).
    """
    events = run.events
    all_nodes = run_nodes(run)
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
    nodes = choose_nodes(
        all_nodes, recoveries, max_nodes, failures=run.summary.failures, focus=focus
    )
    shown = set(nodes)
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
        if event.node is not None and event.node not in shown:
            continue
        targets = nodes if event.node is None else (event.node,)
        markers.extend(Marker(node, event.time_s, kind) for node in targets)
    title = f"{run.source} · {run.strategy} · {run.scenario}"
    return Timeline(
        title,
        nodes,
        run_start,
        run_end,
        tuple(spans),
        tuple(markers),
        tuple(recoveries),
        len(all_nodes),
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
_MARKER_GAP_PX = {"checkpoint": 3.0, "persist": 4.0, "failure": 8.0, "resume": 8.0}
"""Least distance (pixels) between two markers of one kind on a row: about the marker's width,
so that a marker closer to the one kept before it, which would only be drawn over it, is left
out. Keeps the markers, like the bars, to rows x pixels (a simulated day has a resume marker
per node and failure)."""


def pixel_bars(
    spans: Sequence[Span], lo: float, hi: float, pixel_s: float
) -> tuple[dict[str, list[tuple[float, float]]], bool]:
    """The bars of one row, per state, as ``(start, width)`` pairs for ``broken_barh``.

    The rule: a span at least one pixel wide (``pixel_s`` seconds) is drawn as it is, clipped
    to ``[lo, hi]``. A narrower one cannot be seen on its own, so it goes to the pixel its
    middle falls in; each such pixel is drawn one pixel wide in the state that had most time
    in it among those narrow spans, a recovery phase before training or start-up whatever its
    time (a short stretch of training between two failures must not hide them; ties: the
    later state of ``STATE_ORDER``). Touching bars of one state are merged. A row without
    overlapping spans then has at most one wide bar per pixel and one mark per pixel, so the
    bars scale with the pixels across, not with the spans: a recovery of a few seconds in a
    simulated day stays visible as a one-pixel mark instead of 10 invisible bars.

    Returns:
        the bars per state, and whether states were merged away (a pixel held narrow spans of
        several states; a lone narrow state is only drawn a pixel wide, as it looked anyway).
    """
    pixel_s = max(pixel_s, 1e-12)
    wide: dict[str, list[tuple[float, float]]] = {}
    narrow: dict[int, dict[str, float]] = {}
    for span in spans:
        a, b = max(span.start, lo), min(span.end, hi)
        if b <= a:
            continue
        if b - a >= pixel_s:
            wide.setdefault(span.state, []).append((a, b))
        else:
            column = int(((a + b) / 2 - lo) // pixel_s)
            times = narrow.setdefault(column, {})
            times[span.state] = times.get(span.state, 0.0) + (b - a)
    rank = {state: i for i, state in enumerate(STATE_ORDER)}
    steady = ("training", "startup")
    columns: dict[str, list[int]] = {}
    for column, times in narrow.items():
        state = max(times, key=lambda s: (s not in steady, times[s], rank.get(s, -1)))
        columns.setdefault(state, []).append(column)
    bars: dict[str, list[tuple[float, float]]] = {}
    for state in {*wide, *columns}:
        pieces = wide.get(state, [])
        # Runs of consecutive pixels become one piece; pixel edges come from integers so
        # that neighbours touch exactly.
        run_start: int | None = None
        previous = 0
        for column in sorted(columns.get(state, [])):
            if run_start is not None and column == previous + 1:
                previous = column
                continue
            if run_start is not None:
                pieces.append((lo + run_start * pixel_s, min(hi, lo + (previous + 1) * pixel_s)))
            run_start = previous = column
        if run_start is not None:
            pieces.append((lo + run_start * pixel_s, min(hi, lo + (previous + 1) * pixel_s)))
        bars[state] = [(a, b - a) for a, b in merged_spans(pieces)]
    return bars, any(len(times) > 1 for times in narrow.values())


def draw_gantt(
    ax: Axes,
    timeline: Timeline,
    window: tuple[float, float] | None = None,
    *,
    now: float | None = None,
    legend: bool = True,
    steady_legend: bool = False,
) -> None:
    """Draw a timeline on ``ax``: one row per node of ``timeline.nodes``, time (s) across.

    Each row is one ``broken_barh`` collection per state (``pixel_bars``: phases narrower than
    a pixel of the axes become one-pixel marks), so the artists are at most rows x states and
    their bars rows x pixels, however many spans the run has. The title names the timeline,
    how many nodes are left out (``Timeline.rows_note``) and whether phases were merged.

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
    # One pixel of the axes as laid out now, at the figure's dpi (a layout that narrows the
    # axes later, or saving at a higher dpi, only makes the merged marks a pixel or two wide).
    pixels = max(1.0, ax.get_window_extent().width)
    pixel_s = (hi - lo) / pixels
    by_row: dict[int, list[Span]] = {node: [] for node in rows}
    for span in timeline.spans:
        if span.node in by_row:
            by_row[span.node].append(span)
    used: set[str] = set()
    merged = False
    for node, row in rows.items():
        bars, row_merged = pixel_bars(by_row[node], lo, shown_end, pixel_s)
        merged |= row_merged
        # In state order, so that recovery phases lie over training where a mark overlaps.
        for state in sorted(bars, key=lambda s: STATE_ORDER.index(s)):
            used.add(state)
            ax.broken_barh(
                bars[state],
                (row - 0.38, 0.76),
                facecolors=STATE_COLORS[state],
                edgecolor="none",
                hatch="//" if state == "recompute" else None,
            )
    marker_times: dict[tuple[str, int], list[float]] = {}
    for m in timeline.markers:
        if m.node in rows and lo <= m.time <= shown_end:
            marker_times.setdefault((m.kind, m.node), []).append(m.time)
    used_markers: set[str] = set()
    for kind in ("checkpoint", "persist", "failure", "resume"):
        xs: list[float] = []
        ys: list[float] = []
        for node, row in rows.items():
            gap = _MARKER_GAP_PX[kind] * pixel_s
            times: list[float] = []
            for time in sorted(marker_times.get((kind, node), [])):
                if not times or time - times[-1] >= gap:
                    times.append(time)
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
    notes = [timeline.rows_note()]
    if merged:
        notes.append("phases shorter than a pixel drawn as 1-pixel marks")
    ax.set_title("\n".join([timeline.title, *(n for n in notes if n)]))
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
    """Gantt charts of several runs (simulated and measured side by side), one row each.

    Each chart has at most ``MAX_NODES_SHOWN`` node rows (``build_timeline``), so the figure
    stays a page tall whatever the cluster size."""
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
            title, *notes = ax.get_title().split("\n")
            shown = f"(shown {lo:.3g}-{hi:.3g} s of a {timeline.end:.3g} s run)"
            failures = len(timeline.recoveries)
            if failures > MAX_RECOVERIES_SHOWN:
                shown = f"{shown[:-1]}: its first {MAX_RECOVERIES_SHOWN} of {failures} failures)"
            ax.set_title("\n".join([title, shown, *notes]))
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
    timeline = build_timeline(run, focus=index)
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
    heading = " · ".join(
        part for part in (timeline.title, f"failure {recovery.index}", timeline.rows_note()) if part
    )
    fig.text(0.5, top, heading, ha="center", fontsize=10)
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
