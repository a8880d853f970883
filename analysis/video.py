"""The demo video: one recovery, simulated and measured side by side, as an MP4.

The video shows the same failure (matched by index, as the validation matches them) in the
simulated run (left) and the measured run (right) of one scenario, each as the Gantt chart of
``analysis.timeline``: one row per node, the states it passes through, the checkpoint, failure
and resume markers. A "now" line sweeps both charts on one clock, the time since the failure
(shown at the top), and hides what has not happened yet. Under each node's name, its status:
crashed, lost or replaced while that lasts, and once the state is back the tier its restore
used (local memory, a peer's memory, persistent storage); each panel names the phase its
recovery is in. With only one of the two runs (``gemini-ckpt run --no-real``), the video shows
that one.

Frames are drawn with matplotlib (Agg) and encoded to H.264 by the ffmpeg binary that the
``imageio-ffmpeg`` wheel ships, so nothing needs installing besides the Python dependencies.
Each chart is drawn once; a frame redraws only the cover over the future, the "now" line and
the little text that changes, which keeps a few seconds of video to a few seconds of work on
2 cores.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis.results import RunResult, pair_runs
from analysis.timeline import (
    STATE_COLORS,
    STATE_ORDER,
    Recovery,
    Timeline,
    build_timeline,
    draw_gantt,
    phase_at,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle
    from matplotlib.text import Text
    from numpy.typing import NDArray

VIDEO_SIZE = (1280, 720)
"""Width and height of the video, pixels (divisible by 16, as H.264 encoders like)."""

_DPI = 100


@dataclass(frozen=True)
class Panel:
    """One side of the video: a run, its timeline and the recovery shown."""

    run: RunResult
    timeline: Timeline
    recovery: Recovery
    tiers: dict[int, str]

    @property
    def name(self) -> str:
        return {"sim": "simulated", "real": "measured"}.get(self.run.source, self.run.source)


def restore_tiers(run: RunResult, recovery: Recovery, nodes: Sequence[int]) -> dict[int, str]:
    """The tier each node's restore used in one recovery.

    A node's own ``state_restored`` event names its tier. Without one, a failed node took the
    job's tier (the worst any node used), and a survivor its local memory, or persistent
    storage when the whole job rolled back there.
    """
    own: dict[int, str] = {}
    job_tier = recovery.tier
    for event in run.events:
        if event.kind != "state_restored" or event.details.get("failure") != recovery.index:
            continue
        tier = str(event.details.get("tier", "?"))
        if event.node is None:
            job_tier = tier
        else:
            own[event.node] = tier
    survivor = "persistent" if job_tier == "persistent" else "local"
    return {node: own.get(node, job_tier if node in recovery.nodes else survivor) for node in nodes}


def choose_panels(runs: Sequence[RunResult]) -> list[Panel]:
    """The runs to show: a (simulated, measured) pair with a failure in both, Gemini first;
    else the first run with a failure. Empty when no run has one."""

    def panel(run: RunResult, index: int | None) -> Panel | None:
        timeline = build_timeline(run)
        chosen = [r for r in timeline.recoveries if index is None or r.index == index]
        if not chosen:
            return None
        recovery = chosen[0]
        return Panel(run, timeline, recovery, restore_tiers(run, recovery, timeline.nodes))

    pairs = sorted(pair_runs(runs), key=lambda pair: pair[0].strategy != "gemini")
    for sim, real in pairs:
        sim_failures = {f.index for f in sim.summary.failures}
        for index in sorted(sim_failures & {f.index for f in real.summary.failures}):
            left, right = panel(sim, index), panel(real, index)
            if left is not None and right is not None:
                return [left, right]
    ordered = sorted(runs, key=lambda r: (r.source != "real", r.strategy != "gemini"))
    for run in ordered:
        single = panel(run, None)
        if single is not None:
            return [single]
    return []


def frame_clock(panels: Sequence[Panel], frames: int) -> list[float]:
    """The clock of every frame: seconds since the failure, from a little before it to a
    little after the slower side's recomputation has ended."""
    length = max(max(p.recovery.recompute_end - p.recovery.injected, 1e-6) for p in panels)
    before, after = 0.2 * length, 1.15 * length
    if frames < 2:
        return [-before]
    return [-before + (before + after) * i / (frames - 1) for i in range(frames)]


def row_status(panel: Panel, node: int, now: float) -> str:
    """What a node's row says at ``now`` (s since run start): lost, replaced or crashed while
    that lasts, then the tier its restore used; empty otherwise."""
    recovery = panel.recovery
    if now >= recovery.restored:
        return f"restored: {panel.tiers.get(node, recovery.tier)}"
    if node not in recovery.nodes or not recovery.injected <= now < recovery.restart:
        return ""
    if recovery.kind == "software":
        return "crashed"
    back = recovery.ready if recovery.ready is not None else recovery.stopped
    return "lost" if now < back else "replaced"


def _frames_rgba(panels: Sequence[Panel], clock: Sequence[float]) -> Iterator[memoryview]:
    """The frames as RGBA bytes of the figure's canvas, each valid until the next one.

    What does not change is drawn once and kept as a background (the charts, axes, node
    names, headings, legend); each frame restores it and draws only what moves (blitting):
    the cover over the future, the "now" line, the phase of each side, the rows' status and
    the clock. Text is what costs most to draw, so little of it moves.
    """
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Patch, Rectangle
    from matplotlib.transforms import blended_transform_factory

    width, height = VIDEO_SIZE
    fig, axes = plt.subplots(
        1, len(panels), figsize=(width / _DPI, height / _DPI), dpi=_DPI, squeeze=False
    )
    before, after = -clock[0], clock[-1]
    moving: list[tuple[Panel, Axes, float, Rectangle, Line2D, Text, list[Text]]] = []
    used: set[str] = set()
    for panel, ax in zip(panels, axes.flat, strict=True):
        start = panel.recovery.injected
        window = (max(panel.timeline.start, start - before), start + after)
        draw_gantt(ax, panel.timeline, window, legend=False)
        used |= {s.state for s in panel.timeline.spans if s.end > window[0] and s.start < window[1]}
        nodes = panel.timeline.nodes
        ax.set_title("")  # draw_gantt's; the panel's own goes on the left
        ax.set_title(f"{panel.name} ({panel.run.label})", loc="left", fontsize=11, pad=22)
        cover = Rectangle((window[0], -1.0), window[1] - window[0], len(nodes) + 1.0)
        cover.set(facecolor="white", edgecolor="none", animated=True)
        ax.add_patch(cover)
        line = ax.axvline(start, color="#c44e52", linewidth=1.5, linestyle="--", animated=True)
        phase = ax.text(0.0, 1.015, "", transform=ax.transAxes, fontsize=10, animated=True)
        on_rows = blended_transform_factory(ax.transAxes, ax.transData)
        statuses = [
            ax.text(
                -0.02,
                row + 0.3,
                "",
                transform=on_rows,
                ha="right",
                va="center",
                fontsize=8,
                color="#8c2d2d",
                animated=True,
            )
            for row in range(len(nodes))
        ]
        moving.append((panel, ax, window[1], cover, line, phase, statuses))
    handles = [Patch(facecolor=STATE_COLORS[s], label=s) for s in STATE_ORDER if s in used]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=9)
    recovery = panels[0].recovery
    sides = " vs ".join(p.name for p in panels)
    fig.text(
        0.5,
        0.965,
        f"{panels[0].run.scenario} · failure {recovery.index}: {recovery.kind} of node(s) "
        f"{list(recovery.nodes)} · {sides}",
        ha="center",
        va="top",
        fontsize=13,
    )
    clock_text = fig.text(0.5, 0.915, "", ha="center", va="top", fontsize=12, animated=True)
    fig.subplots_adjust(left=0.12, right=0.98, top=0.78, bottom=0.17, wspace=0.3)
    fig.canvas.draw()
    background = fig.canvas.copy_from_bbox(fig.bbox)  # type: ignore[attr-defined]
    try:
        for now_rel in clock:
            fig.canvas.restore_region(background)  # type: ignore[attr-defined]
            for panel, ax, end, cover, line, phase, statuses in moving:
                now = panel.recovery.injected + now_rel
                cover.set_x(now)
                cover.set_width(max(0.0, end - now))  # from now to the window's end
                line.set_xdata([now, now])
                phase.set_text(phase_at(panel.recovery, now))
                for artist in (cover, *ax.spines.values(), line, phase):
                    ax.draw_artist(artist)
                for node, status in zip(panel.timeline.nodes, statuses, strict=True):
                    text = row_status(panel, node, now)
                    if text:
                        status.set_text(text)
                        status.set_color("#2d6a3e" if text.startswith("restored") else "#8c2d2d")
                        ax.draw_artist(status)
            clock_text.set_text(f"clock: t = {now_rel:+6.2f} s since the failure")
            fig.draw_artist(clock_text)
            buffer = fig.canvas.buffer_rgba()  # type: ignore[attr-defined]
            rgba = np.asarray(buffer)
            if rgba.shape != (height, width, 4):
                raise RuntimeError(
                    f"frame of {rgba.shape[1]}x{rgba.shape[0]}, not {width}x{height}"
                )
            yield memoryview(buffer).cast("B")
    finally:
        plt.close(fig)


def render_frames(panels: Sequence[Panel], clock: Sequence[float]) -> Iterator[NDArray[Any]]:
    """RGB frames (height x width x 3, ``uint8``, ``VIDEO_SIZE``), one per clock value."""
    import numpy as np

    width, height = VIDEO_SIZE
    for frame in _frames_rgba(panels, clock):
        yield np.frombuffer(frame, dtype=np.uint8).reshape(height, width, 4)[:, :, :3].copy()


def write_demo_video(
    runs: Sequence[RunResult], path: str | Path, *, frames: int = 60, fps: int = 12
) -> Path | None:
    """Write the MP4 of one recovery (module docstring); None when no run has a failure.

    Args:
        runs: the report's runs (sweep runs left out).
        path: the MP4 to write.
        frames: number of frames, >= 2.
        fps: frames per second of the video.
    """
    import imageio_ffmpeg

    if frames < 2:
        raise ValueError(f"frames must be >= 2, got {frames}")
    panels = choose_panels(runs)
    if not panels:
        return None
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = imageio_ffmpeg.write_frames(
        str(out),
        VIDEO_SIZE,
        fps=fps,
        codec="libx264",
        pix_fmt_in="rgba",
        pix_fmt_out="yuv420p",
        macro_block_size=16,
        ffmpeg_log_level="error",
        output_params=["-preset", "veryfast", "-movflags", "+faststart"],
    )
    writer.send(None)  # start ffmpeg
    try:
        for frame in _frames_rgba(panels, frame_clock(panels, frames)):
            writer.send(bytes(frame))
    finally:
        writer.close()
    return out
