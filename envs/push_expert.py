"""The T block's geometry and a scripted approach-and-push expert for ``JepaAgent/Push-v0``.

Geometry (block frame: origin at the T's centre of mass, the bar along x at +y, the stem towards -y),
mirrored from ``envs/assets/push.xml`` (``tests/test_push.py`` checks that the two agree).

The expert (:class:`ScriptedPusher`) chains sub-goals, OGBench-style: a sub-goal is the block moved
3-12 cm in a random direction and turned by up to +-60 degrees, kept inside the central +-0.10 m; of
``candidates`` drawn, it keeps the one whose start the pusher reaches soonest. To move the block along
``u`` (from its centre of mass to the sub-goal), the pusher pushes where the line ``c + l * n + s * u``
first comes within its radius of the T (``n`` is ``u`` turned by +90 degrees); the lateral offset ``l``
turns the block (pushing at ``+l`` along ``u`` gives a torque ``-l |F|``, so ``l`` takes the sign opposite
to the yaw still needed). It first *approaches* a point ``gap`` behind that contact point, going round
the T's convex hull corner by corner when the straight way is blocked, then *pushes* through the contact
point, recomputed from the block's pose at every step, until the sub-goal is reached or overshot, or
``patience`` steps have passed. Actions move the servo target straight towards the wanted point, scaled
so that no component exceeds 1. Everything is plain numpy on the simulator state; the expert draws only
from the generator it is given.
"""

from __future__ import annotations

import math

import numpy as np

# block-frame boxes of the T: (centre x, centre y, half-size x, half-size y); bar then stem
T_BOXES = np.array([[0.0, 0.031731, 0.075, 0.02], [0.0, -0.043269, 0.02, 0.055]])
_SIGNS = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]])
T_CORNERS = (T_BOXES[:, None, :2] + _SIGNS[None] * T_BOXES[:, None, 2:]).reshape(-1, 2)  # [8, 2], block frame
T_RADIUS = float(np.linalg.norm(T_CORNERS, axis=1).max())  # the T's bounding circle about its centre of mass
T_HULL = T_CORNERS[[1, 2, 3, 0, 4, 5]]  # the T's convex hull, counter-clockwise: bar corners, stem foot
_BOXES = [tuple(float(x) for x in box) for box in T_BOXES]  # the same, as floats for the per-step geometry
PUSHER_RADIUS = 0.0125  # m
WALL = 0.21  # inner faces of the walls at +-WALL (m)
PUSHER_RANGE = 0.2  # the pusher's joint range, +-PUSHER_RANGE (m)


def rotation(yaw: float) -> np.ndarray:
    """2-D rotation matrix ``[2, 2]`` of ``yaw`` radians."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s], [s, c]])


def wrap_angle(angle: np.ndarray | float) -> np.ndarray | float:
    """``angle`` wrapped to ``[-pi, pi)``."""
    return (np.asarray(angle) + np.pi) % (2 * np.pi) - np.pi


def t_corners(pose: np.ndarray) -> np.ndarray:
    """World ``xy`` of the 8 corners of the T at ``pose = (x, y, yaw)`` -> ``[8, 2]``."""
    return T_CORNERS @ rotation(pose[2]).T + pose[:2]


def _norm(v: np.ndarray) -> float:
    return math.hypot(v[0], v[1])


def _to_block(x: float, y: float, pose: np.ndarray) -> tuple[float, float]:
    """World point ``(x, y)`` in the block frame of ``pose`` (plain floats: these run per step)."""
    c, s = math.cos(pose[2]), math.sin(pose[2])
    dx, dy = x - pose[0], y - pose[1]
    return c * dx + s * dy, -s * dx + c * dy


def _to_block_vector(x: float, y: float, pose: np.ndarray) -> tuple[float, float]:
    c, s = math.cos(pose[2]), math.sin(pose[2])
    return c * x + s * y, -s * x + c * y


def distance_to_t(point: np.ndarray, pose: np.ndarray) -> float:
    """Euclidean distance (m) from ``point [2]`` to the T at ``pose``; 0 inside it."""
    px, py = _to_block(float(point[0]), float(point[1]), pose)
    best = math.inf
    for cx, cy, hx, hy in _BOXES:
        best = min(best, math.hypot(max(abs(px - cx) - hx, 0.0), max(abs(py - cy) - hy, 0.0)))
    return best


def _slab(ox: float, oy: float, vx: float, vy: float, hx: float, hy: float, lo: float, hi: float):
    """Clip the parameter range ``[lo, hi]`` of the line ``o + s * v`` to the box ``|x| <= hx, |y| <= hy``
    (box frame); an empty range comes back with ``lo > hi``."""
    for oi, vi, h in ((ox, vx, hx), (oy, vy, hy)):
        if abs(vi) < 1e-12:
            if abs(oi) > h:
                return 1.0, 0.0
            continue
        t1, t2 = (-h - oi) / vi, (h - oi) / vi
        lo, hi = max(lo, min(t1, t2)), min(hi, max(t1, t2))
    return lo, hi


def line_entries(origin: np.ndarray, direction: np.ndarray, pose: np.ndarray, radius: float) -> list[float]:
    """Each ``s`` at which ``origin + s * direction`` comes within ``radius`` (m) of one of the T's boxes
    (at most one per box, those it meets): where a pusher of that radius moving along ``direction`` would
    touch that box. Exact: each box grown by ``radius`` with rounded corners (its Minkowski sum with a
    disk). The smallest is where the pusher first touches the T."""
    ox, oy = _to_block(float(origin[0]), float(origin[1]), pose)
    vx, vy = _to_block_vector(float(direction[0]), float(direction[1]), pose)
    entries = []
    for cx, cy, hx, hy in _BOXES:
        bx, by = ox - cx, oy - cy
        lo, hi = _slab(bx, by, vx, vy, hx + radius, hy + radius, -math.inf, math.inf)
        if lo > hi:
            continue
        ex, ey = bx + lo * vx, by + lo * vy
        if abs(ex) > hx and abs(ey) > hy:  # entered the grown box at a corner: the rounded corner decides
            kx, ky = bx - math.copysign(hx, ex), by - math.copysign(hy, ey)  # o relative to that corner
            a, b, c = vx * vx + vy * vy, 2 * (kx * vx + ky * vy), kx * kx + ky * ky - radius * radius
            disc = b * b - 4 * a * c
            if disc < 0:
                continue
            lo = (-b - math.sqrt(disc)) / (2 * a)
        entries.append(lo)
    return entries


def segment_hits_t(a: np.ndarray, b: np.ndarray, pose: np.ndarray, inflate: float) -> bool:
    """Whether the segment ``a -> b`` passes within ``inflate`` (m) of the T (boxes grown, square corners:
    a slightly conservative test)."""
    ox, oy = _to_block(float(a[0]), float(a[1]), pose)
    vx, vy = _to_block_vector(float(b[0] - a[0]), float(b[1] - a[1]), pose)
    for cx, cy, hx, hy in _BOXES:
        lo, hi = _slab(ox - cx, oy - cy, vx, vy, hx + inflate, hy + inflate, 0.0, 1.0)
        if lo <= hi:
            return True
    return False


def grow_polygon(vertices: np.ndarray, margin: float) -> np.ndarray:
    """The convex polygon ``vertices [V, 2]`` (counter-clockwise) with every edge moved out by ``margin``."""
    e_in = vertices - np.roll(vertices, 1, axis=0)  # edge arriving at each vertex
    e_out = np.roll(vertices, -1, axis=0) - vertices
    n_in = np.stack([e_in[:, 1], -e_in[:, 0]], 1) / np.linalg.norm(e_in, axis=1, keepdims=True)
    n_out = np.stack([e_out[:, 1], -e_out[:, 0]], 1) / np.linalg.norm(e_out, axis=1, keepdims=True)
    return vertices + margin * (n_in + n_out) / (1.0 + np.sum(n_in * n_out, axis=1, keepdims=True))


class ScriptedPusher:
    """Approach-and-push expert on the true state (see the module docstring).

    Args:
        rng: the generator sub-goals are drawn from.
        max_delta: metres of servo-target displacement per unit action (the env's ``max_delta``).
        move_range: ``(min, max)`` distance (m) of a sub-goal from the block.
        max_turn: largest sub-goal rotation (rad).
        goal_box: sub-goal centres of mass stay within ``+-goal_box`` (m).
        max_offset: lateral offset (m) of the contact point at full turning.
        gap: how far behind the contact point (m) the approach ends.
        patience: steps after which an unreached sub-goal is replaced.
        candidates: sub-goals drawn each time; the one whose approach is shortest is kept (1: any).
        clearance: margin (m) between the pusher and the T's hull on the way round it; at 0 or below the
            pusher brushes the corners and nudges the block, which doubles as contact in the data.
        graze: the way to a point counts as clear when it keeps ``graze x`` the pusher's radius from the T
            (below 1: it may brush the T).

    Call it with the simulator state ``(qpos [5], ...)`` = ``(pusher xy, block xy, block yaw, ...)``.
    The defaults keep off the block on the way round: purposeful pushes, the env's goal generator. On 40
    ``Push-v0`` episodes of 50 steps from random starts the block moves (> 1 mm or > 1 degree) in about 47%
    of the steps with them, and in about 80% with ``clearance=-0.005, graze=0.3, max_offset=0.015``, which
    brush past the T's corners (the data policy's setting, ``jepa_agent.collect.PushPolicy``).
    """

    lost = 0.05  # m: pushing stops when the contact point moves this far from the pusher

    def __init__(
        self,
        rng: np.random.Generator,
        max_delta: float,
        move_range: tuple[float, float] = (0.03, 0.12),
        max_turn: float = np.pi / 3,
        goal_box: float = 0.10,
        max_offset: float = 0.03,
        gap: float = 0.01,
        patience: int = 25,
        candidates: int = 16,
        clearance: float = 0.008,
        graze: float = 0.9,
    ) -> None:
        if not max_delta > 0:
            raise ValueError(f"max_delta={max_delta!r}: expected > 0 (m per unit action)")
        if not 0 < move_range[0] <= move_range[1]:
            raise ValueError(f"move_range={move_range!r}: expected 0 < min <= max (m)")
        if not (isinstance(candidates, (int, np.integer)) and candidates >= 1 and patience >= 1):
            raise ValueError(f"candidates={candidates!r}, patience={patience!r}: expected ints >= 1")
        self.rng, self.max_delta = rng, float(max_delta)
        self.move_range, self.max_turn, self.goal_box = move_range, float(max_turn), float(goal_box)
        self.max_offset, self.gap, self.patience = float(max_offset), float(gap), int(patience)
        self.candidates, self.graze = int(candidates), float(graze)
        self._hull = grow_polygon(T_HULL, PUSHER_RADIUS + float(clearance))  # block frame
        self.reset()

    def reset(self) -> None:
        """Forget the sub-goal (the next call draws a new one)."""
        self.subgoal: np.ndarray | None = None  # (x, y, yaw)
        self.pushing = False
        self._u0 = np.zeros(2)
        self._steps = 0

    # ------------------------------------------------------------------------------------ helpers
    def _contact(
        self, p: np.ndarray, pose: np.ndarray, u: np.ndarray, offset: float, pressing: bool = False
    ) -> np.ndarray | None:
        """Where the pusher touches the T when pushing along ``u`` on the line at lateral ``offset`` from the
        centre of mass: the first face on that line; while ``pressing``, the first face not behind the
        pusher ``p`` (past the bar's tip, in the T's notch, the stem is next), or None when none is left."""
        n = np.array([-u[1], u[0]])
        for lateral in (offset, 0.0):  # the line through the centre of mass always meets the T
            origin = pose[:2] + lateral * n
            entries = sorted(line_entries(origin, u, pose, PUSHER_RADIUS))
            if entries and not pressing:
                return origin + entries[0] * u
            if entries:
                here = float((p - origin) @ u)  # the pusher's place along the line
                ahead = [e for e in entries if e >= here - 0.005]
                return origin + ahead[0] * u if ahead else None
        raise AssertionError("a line through the T's centre of mass must meet it")

    def _reachable(self, point: np.ndarray) -> bool:
        return abs(point[0]) <= PUSHER_RANGE and abs(point[1]) <= PUSHER_RANGE

    def _new_subgoal(self, p: np.ndarray, pose: np.ndarray) -> None:
        """Draw ``candidates`` sub-goals and keep the one the pusher reaches the start of soonest (a
        straight approach, else one round the T), among those whose approach point is in its range."""
        draws = self.rng.uniform(size=(self.candidates, 3))  # distance, direction, turn
        dist = self.move_range[0] + draws[:, 0] * (self.move_range[1] - self.move_range[0])
        angle = np.pi * (2 * draws[:, 1] - 1)
        xy = np.clip(pose[:2] + dist[:, None] * np.stack([np.cos(angle), np.sin(angle)], 1), -self.goal_box,
                     self.goal_box)  # fmt: skip
        yaw = pose[2] + self.max_turn * (2 * draws[:, 2] - 1)
        r_p, a_p = _norm(p - pose[:2]), math.atan2(p[1] - pose[1], p[0] - pose[0])
        best, best_len = None, math.inf
        for i in range(self.candidates):
            u = xy[i] - pose[:2]
            move = _norm(u)
            if move < 0.025:  # (clipped to the box) too close to count as a move
                continue
            u = u / move
            approach = self._contact(p, pose, u, 0.0) - self.gap * u
            if not self._reachable(approach):
                continue
            length = _norm(approach - p)
            if segment_hits_t(p, approach, pose, self.graze * PUSHER_RADIUS):  # round the T: about an arc
                r_a = _norm(approach - pose[:2])
                a_a = math.atan2(approach[1] - pose[1], approach[0] - pose[0])
                length = 0.5 * (r_p + r_a) * abs(float(wrap_angle(a_a - a_p))) + abs(r_p - r_a)
            if length < best_len:
                best, best_len = (np.array([*xy[i], yaw[i]]), u), length
        if best is None:  # nothing reachable: any direction (patience will replace it)
            best = (np.array([pose[0] + 0.05, pose[1], pose[2]]), np.array([1.0, 0.0]))
        self.subgoal, self._u0 = best
        self.pushing, self._steps = False, 0

    def _avoid_t(self, p: np.ndarray, target: np.ndarray, pose: np.ndarray) -> np.ndarray:
        """``target`` if the way there is clear of the T, else a waypoint round it: the next corner, in the
        shorter direction round, of the T's convex hull grown by the pusher's radius plus ``clearance``;
        from inside that grown hull, first straight out from the centre of mass to its edge."""
        if not segment_hits_t(p, target, pose, self.graze * PUSHER_RADIUS):
            return target
        c = pose[:2]
        hull = self._hull @ rotation(pose[2]).T + c  # [6, 2] world, counter-clockwise
        angles = np.arctan2(hull[:, 1] - c[1], hull[:, 0] - c[0])
        a_p = np.arctan2(p[1] - c[1], p[0] - c[0])
        # the edge (k, k + 1) whose angular sector holds p
        after = wrap_angle(angles - a_p)  # > 0: corner counter-clockwise of p
        k_next = int(np.argmin(np.where(after > 0, after, np.inf)))
        k = (k_next - 1) % len(hull)
        a, b = hull[k], hull[k_next]
        edge, rel = b - a, p - a
        if edge[0] * rel[1] - edge[1] * rel[0] > 0:  # left of a counter-clockwise edge: inside
            d = (p - c) / max(_norm(p - c), 1e-9)
            n = np.array([edge[1], -edge[0]])  # outward normal (unnormalised)
            out = c + d * float((a - c) @ n) / max(float(d @ n), 1e-9)  # where the ray from c leaves it
            if _norm(out - p) > 0.004:
                return out
        turn = float(wrap_angle(np.arctan2(target[1] - c[1], target[0] - c[0]) - a_p))
        i = k_next if turn >= 0 else k
        if _norm(hull[i] - p) < 0.005:  # already at that corner: the one after it
            i = (i + (1 if turn >= 0 else -1)) % len(hull)
        return hull[i]

    # -------------------------------------------------------------------------------------- policy
    def target(self, state: np.ndarray) -> np.ndarray:
        """Where the pusher should go next (m), from the state ``(pusher xy, block xy, block yaw, ...)``."""
        state = np.asarray(state, np.float64)
        p, pose = state[:2], state[2:5]
        if self.subgoal is not None:
            to_goal = self.subgoal[:2] - pose[:2]
            reached = _norm(to_goal) < 0.015 or float(to_goal @ self._u0) < 0
            if reached or self._steps >= self.patience:
                self.subgoal = None
        if self.subgoal is None:
            self._new_subgoal(p, pose)
        self._steps += 1
        u = self.subgoal[:2] - pose[:2]
        u = u / max(_norm(u), 1e-9)
        turn = float(wrap_angle(self.subgoal[2] - pose[2]))
        offset = -min(max(turn / self.max_turn, -1.0), 1.0) * self.max_offset
        if self.pushing:
            contact = self._contact(p, pose, u, offset, pressing=True)
            touching = distance_to_t(p, pose) <= PUSHER_RADIUS + 0.01
            if contact is None or not touching or _norm(p - contact) > self.lost:  # lost it
                self.pushing = False
        if not self.pushing:
            contact = self._contact(p, pose, u, offset)
            approach = contact - self.gap * u
            if not self._reachable(approach):  # the pusher cannot get behind the block: give up on it
                self._steps = self.patience
            along = min(max(float((p - approach) @ u), 0.0), self.gap)
            if _norm(p - approach - along * u) < 0.006:  # on the short way in to the contact
                self.pushing = True
            else:
                return self._avoid_t(p, approach, pose)
        return contact + self.max_delta * u

    def __call__(self, state: np.ndarray) -> np.ndarray:
        """The action ``[2]`` (float32, within ``[-1, 1]``) towards :meth:`target`."""
        a = (self.target(state) - np.asarray(state[:2], np.float64)) / self.max_delta
        peak = float(np.abs(a).max())
        return (a / peak if peak > 1.0 else a).astype(np.float32)
