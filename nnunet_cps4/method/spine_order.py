"""Spine-ordered level labels: vertebrae and discs relabelled by their order along the spine, counted from an anchor.

A network trained on few cases puts well-shaped labels on the wrong vertebra, and self-training repeats the
mistake. Levels are identified by counting, so `order_levels` keeps the shapes of a label map (2D or 3D) and
re-assigns the level names of a `LevelOrder` (distances in `spacing` units):

1. Components. All vertebra classes form one mask, all disc classes another (class-agnostic within a kind), split
   into face-connected components. A component holding two or more labels that each reach `FRAGMENT_FRACTION` of
   the kind's typical single-label component (neighbouring levels touching where a thin disc is missing, labelled
   as two levels) is split by label. A kind's typical size is the size of the component holding its median voxel;
   components below `SPECK_FRACTION` of it are specks and are not placed. Of a map more fragmented than
   `MAX_PIECES_PER_LEVEL` components per level (an untrained network's noise) only that many of the largest are
   placed: the steps below grow with the square of the number of components.
2. Axis. Centroids are projected on `spine_axis` (an image axis) or, by default, on the principal axis of the
   centroids of the components above `FRAGMENT_FRACTION` of the typical size (any orientation; a spine bent by less
   than about 90 degrees). Which end is caudal follows the labels (sign of the correlation between position and
   order index of the majority labels); without that evidence increasing index is caudal (rows superior ->
   inferior; in the phantom's (LR, SI, AP) volumes and (SI, AP) slices the SI axis is axis -2). `step` is the median
   centroid distance between neighbours of different kinds; a kind's height is the median thickness (largest
   inscribed ball) of its components.
3. Structures. Components of one kind closer along the axis than 3/4 of their height plus 1/2 of the other kind's,
   less than `ISOLATION_STEPS` steps apart, with no voxel of the other kind on the line between their centroids,
   are one structure: a level split in pieces counts once, whatever its pieces' labels. A structure whose surface
   is more than `ISOLATION_STEPS` steps from all others (a false positive outside the spine) is not placed, and the
   axis is measured again without it.
4. Alignment. Structures above `FRAGMENT_FRACTION` of the typical size form a chain along the axis; each gets a
   level of its kind, or none, by dynamic programming. From one placed structure to the next the level advances
   by what the surface gap between them allows: 1 (other kind) or 2 (same kind) plus 2 for each missing
   disc-vertebra pair that fills the gap (typical heights; two counts when both fit about equally well), so a
   missing level leaves its positions empty; or it stays, for two structures of one kind whose centroids are
   less than its typical height apart (pieces of one level). Up to `MAX_SKIPPED` structures in a row may be left
   out between two placed ones, if the gap across them allows no more levels than counting through them would. Of
   these assignments the one that changes the fewest voxels wins (a voxel costs 1 when its structure gets a level
   other than its label, `SKIP_COST` when its structure is left out): the model's labels stay wherever they are in
   an order the geometry allows, and a structure that breaks the order (a level split in pieces, a wrongly
   labelled blob) is relabelled or left out instead of moving every level above it.
   Fragments (smaller structures) are then placed outwards, nearest first: with the level of a placed structure of
   their kind whose centroid is less than a typical height away, else at the position their gap to a placed
   neighbour gives, if that fits within `FIT_TOLERANCE` of the thinner height and the position is free; otherwise
   not at all (e.g. bone beside a disc).
5. Anchor. One structure keeps its label whatever the cost: the largest whose majority label is the order's anchor
   (the sacrum; neighbouring anchor-labelled structures are one); else, with `probabilities`, the structure with
   the highest mean probability of its majority class; else none, and the labels of the whole chain decide (the
   offset most voxels agree with). A structure can anchor only where the chain leaves room for its level: no more
   structures on either side of it than the order has levels there, plus `MAX_SKIPPED` (a blob labelled as the
   sacrum above the spine, seen in a mean teacher's prediction, would otherwise leave every level out).
6. Output. Each placed structure gets the label of its level, all its voxels, so every level appears at most once,
   in order, discs between vertebrae. Structures beyond either end of the order, unplaced fragments, isolated
   structures and specks are set to `ignore_value` (left as they are when it is None). Labels outside the order are
   never changed; a map without vertebra or disc voxels comes back unchanged.
"""
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from nnunet_cps4.method.prompts import ClassPrompts

SPECK_FRACTION = 0.05  # of the typical component size of the kind: smaller components are never placed
FRAGMENT_FRACTION = 0.35  # of the typical size of the kind: smaller structures do not define the chain
FIT_TOLERANCE = 0.5  # of the thinner kind's height: how far a fragment's gap may be off and still fit
ISOLATION_STEPS = 3.0  # steps: a structure whose surface is this far from all others is not part of the spine
DISC_TO_VERTEBRA = 0.4  # typical disc height / vertebral body height, used only when one kind is absent
MAX_SKIPPED = 3  # structures in a row the alignment may leave out between two placed ones
SKIP_COST = 1.001  # per voxel of a structure left out (relabelling a voxel costs 1): placing wins a tie
MAX_PIECES_PER_LEVEL = 4  # a map with more non-speck components than this times the levels: only the largest count
VERTEBRA, DISC = 0, 1


@dataclass(frozen=True)
class LevelOrder:
    """Label ids along the spine from caudal to cranial, vertebrae and discs alternating.

    discs: the ids in `labels` that are discs (the others are vertebrae); anchor: the id levels are counted from
    (e.g. the sacrum), or None.
    """
    labels: Tuple[int, ...]
    discs: FrozenSet[int]
    anchor: Optional[int] = None

    def __post_init__(self):
        labels, discs = tuple(int(i) for i in self.labels), frozenset(int(i) for i in self.discs)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "discs", discs)
        if (len(labels) < 2 or len(set(labels)) < len(labels) or 0 in labels or not discs <= set(labels)
                or any((a in discs) == (b in discs) for a, b in zip(labels, labels[1:]))
                or (self.anchor is not None and self.anchor not in labels)):
            raise ValueError(f"not a level order (unique non-zero labels, vertebrae and discs alternating, discs and "
                             f"anchor among the labels): {self}")

    @classmethod
    def from_prompts(cls, prompts: ClassPrompts) -> Optional["LevelOrder"]:
        """The prompt file's "spine_order" as label ids; None when it declares none."""
        order = prompts.spine_order
        if order is None:
            return None
        ids = dict(zip(prompts.class_names, prompts.label_ids))
        return cls(tuple(ids[n] for n in order.sequence), frozenset(ids[n] for n in order.discs),
                   None if order.anchor is None else ids[order.anchor])


@dataclass(eq=False)
class _Piece:
    """One connected component: kind, bounding box and mask in it, size, centroid, voxels per label, position."""
    kind: int
    box: Tuple[slice, ...]
    mask: np.ndarray
    size: int
    centroid: np.ndarray
    counts: Dict[int, int]
    t: float = 0.0  # position along the spine axis, increasing from caudal to cranial


@dataclass(eq=False)
class _Structure:
    """Pieces of one kind counted as one level."""
    kind: int
    pieces: List[_Piece] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(p.size for p in self.pieces)

    @property
    def t(self) -> float:
        return sum(p.t * p.size for p in self.pieces) / self.size

    @property
    def majority(self) -> int:
        counts = sum((Counter(p.counts) for p in self.pieces), Counter())
        return max(sorted(counts), key=lambda label: counts[label])


def _pieces(kind_masks: Dict[int, np.ndarray], labels: np.ndarray, spacing: np.ndarray) -> List[_Piece]:
    pieces = []
    for kind in (VERTEBRA, DISC):
        components, _ = ndimage.label(kind_masks[kind])
        limit = None  # only needed (and computed) when a component holds more than one label
        for i, box in enumerate(ndimage.find_objects(components), start=1):
            mask = components[box] == i
            values, counts = np.unique(labels[box][mask], return_counts=True)
            if len(values) > 1 and limit is None:
                limit = FRAGMENT_FRACTION * _typical_label_component(labels, kind_masks[kind])
            if len(values) == 1 or (counts >= limit).sum() < 2:
                pieces.append(_piece(kind, box, mask, dict(zip(values.tolist(), counts.tolist())), spacing))
                continue
            # levels that touch (e.g. through a disc missing in a lateral slice) but are labelled as two levels
            # of full size each are not one level: split by label; step 3 joins what belongs together again
            for value in values.tolist():
                parts, n = ndimage.label(mask & (labels[box] == value))
                for j in range(1, n + 1):
                    part = parts == j
                    pieces.append(_piece(kind, box, part, {value: int(part.sum())}, spacing))
    return pieces


def _piece(kind: int, box: Tuple[slice, ...], mask: np.ndarray, counts: Dict[int, int], spacing: np.ndarray) -> _Piece:
    """A piece from its mask in `box` and its voxels per label."""
    centroid = (np.argwhere(mask).mean(0) + [s.start for s in box]) * spacing
    return _Piece(kind, box, mask, sum(counts.values()), centroid, counts)


def _weighted_median(sizes) -> float:
    """The size of the item holding the median voxel (voxel-weighted median size; 0 for no items)."""
    sizes = sorted(sizes)
    return float(sizes[int(np.searchsorted(np.cumsum(sizes), sum(sizes) / 2))]) if sizes else 0.0


def _typical_label_component(labels: np.ndarray, kind_mask: np.ndarray) -> float:
    """Voxel-weighted median size of the connected components of single labels of one kind (0 if none)."""
    sizes = []
    for value in np.unique(labels[kind_mask]):
        parts, _ = ndimage.label(labels == value)
        sizes += np.bincount(parts.ravel())[1:].tolist()
    return _weighted_median(sizes)


def _below_fraction(items, fraction: float) -> set:
    """The items smaller than `fraction` of the typical size of their kind (voxel-weighted median size)."""
    small = set()
    for kind in (VERTEBRA, DISC):
        limit = fraction * _weighted_median(x.size for x in items if x.kind == kind)
        small.update(x for x in items if x.kind == kind and x.size < limit)
    return small


def _axis_vector(pieces: List[_Piece], spine_axis: Optional[int], ndim: int) -> np.ndarray:
    if spine_axis is not None:
        if not -ndim <= int(spine_axis) < ndim:
            raise ValueError(f"spine_axis {spine_axis} is not an axis of a {ndim}D map")
        return np.eye(ndim)[int(spine_axis)]
    centroids = np.array([p.centroid for p in pieces])
    if len(pieces) < 2 or np.allclose(centroids, centroids[0]):
        return np.eye(ndim)[-2]
    axis = np.linalg.svd(centroids - centroids.mean(0), full_matrices=False)[2][0]
    return axis if axis[np.argmax(np.abs(axis))] > 0 else -axis


def _step(pieces: List[_Piece]) -> float:
    """Median centroid distance between consecutive pieces of different kinds (half that between pieces of one
    kind when only one is present); inf when there is nothing to measure."""
    ordered = sorted(pieces, key=lambda p: p.t)
    pairs = list(zip(ordered, ordered[1:]))
    distances = ([b.t - a.t for a, b in pairs if a.kind != b.kind]
                 or [(b.t - a.t) / 2 for a, b in pairs if b.t - a.t > 1e-9])
    step = float(np.median(distances)) if distances else 0.0
    return step if step > 1e-9 else np.inf


def _crosses(mask: np.ndarray, a: np.ndarray, b: np.ndarray, spacing: np.ndarray) -> bool:
    """Whether the straight line between two points (in spacing units) passes through a voxel of `mask`."""
    a, b = a / spacing, b / spacing
    points = np.rint(a + np.linspace(0, 1, 2 * int(np.ceil(np.abs(b - a).max())) + 2)[:, None] * (b - a))
    return bool(mask[tuple(np.clip(points.astype(int), 0, np.array(mask.shape) - 1).T)].any())


def _group(pieces: List[_Piece], other_kind: Dict[int, np.ndarray], spacing: np.ndarray,
           height: Dict[int, float], step: float) -> List[_Structure]:
    """Step 3: each piece joins the nearest structure of its kind that it may belong to, else starts one."""
    structures = []
    for kind in (VERTEBRA, DISC):
        same, reach = [], 0.75 * height[kind] + 0.5 * height[1 - kind]
        for p in sorted((p for p in pieces if p.kind == kind), key=lambda p: p.t):
            near = [(abs(p.t - s.t), i) for i, s in enumerate(same) if abs(p.t - s.t) < reach and all(
                np.linalg.norm(p.centroid - q.centroid) < ISOLATION_STEPS * step
                and not _crosses(other_kind[kind], p.centroid, q.centroid, spacing) for q in s.pieces)]
            if near:
                same[min(near)[1]].pieces.append(p)
            else:
                same.append(_Structure(kind, [p]))
        structures += same
    return structures


class _Space:
    """Which structure owns each voxel: surface gaps, thicknesses and isolation in `spacing` units."""

    def __init__(self, shape, spacing: np.ndarray, structures: List[_Structure]):
        self.spacing, self.owner, self.id = spacing, np.full(shape, -1, np.int32), {}
        for i, s in enumerate(structures):
            self.id[s] = i
            for p in s.pieces:
                self.owner[p.box][p.mask] = i

    def _near(self, s: _Structure, others, margin) -> Tuple[np.ndarray, np.ndarray]:
        """Distance to `s` and the owner map, in the bounding box of s and others widened by `margin` voxels."""
        boxes = [p.box for x in [s, *others] for p in x.pieces]
        lo = np.min([[b.start for b in box] for box in boxes], axis=0) - margin
        hi = np.max([[b.stop for b in box] for box in boxes], axis=0) + margin
        owner = self.owner[tuple(slice(max(0, int(a)), int(b)) for a, b in zip(lo, hi))]
        return ndimage.distance_transform_edt(owner != self.id[s], sampling=self.spacing), owner

    def gap(self, a: _Structure, b: _Structure) -> float:
        """Smallest distance between the surfaces of two structures (0 when they touch)."""
        distance, owner = self._near(a, [b], 1)
        return max(0.0, float(distance[owner == self.id[b]].min()) - float(self.spacing.min()))

    def thickness(self, s: _Structure) -> float:
        """Diameter of the largest ball inside the structure: the height of a vertebral body or disc."""
        distance, owner = self._near(s, [], 0)
        radius = ndimage.distance_transform_edt(np.pad(owner == self.id[s], 1), sampling=self.spacing).max()
        return max(2 * float(radius) - float(self.spacing.min()), float(self.spacing.min()))

    def isolated(self, s: _Structure, limit: float) -> bool:
        """Whether no other structure comes within `limit` of this one's surface."""
        distance, owner = self._near(s, [], np.ceil(limit / self.spacing).astype(int) + 1)
        others = (owner >= 0) & (owner != self.id[s])
        return not others.any() or float(distance[others].min()) - float(self.spacing.min()) > limit


def _fits(gap: float, kind_a: int, kind_b: int, height: Dict[int, float]) -> List[Tuple[int, float]]:
    """(positions, misfit) from a structure of kind_a to the next one present, of kind_b, across a surface gap, for
    every advance whose missing structures (kinds alternating, typical heights) fill the gap about as well as the
    best one (within FIT_TOLERANCE of the thinner height); best first."""
    fits, n = [], 1 if kind_a != kind_b else 2
    while n < 100:
        missing = sum(height[kind_a if i % 2 == 0 else 1 - kind_a] for i in range(1, n))
        fits.append((n, abs(gap - missing)))
        if missing > gap:
            break
        n += 2
    best = min(misfit for _, misfit in fits)
    return sorted((f for f in fits if f[1] <= best + FIT_TOLERANCE * min(height.values())), key=lambda f: f[1])


def _advance(gap: float, kind_a: int, kind_b: int, height: Dict[int, float]) -> Tuple[int, float]:
    """(positions, misfit) of the advance that fills the gap best."""
    return _fits(gap, kind_a, kind_b, height)[0]


def _anchor(chain: List[_Structure], order: LevelOrder, probabilities: Optional[np.ndarray]
            ) -> Tuple[Optional[_Structure], str]:
    """Step 5: the structure whose level is fixed (its majority label), and the rule that chose it; None: the labels
    of the whole chain decide. Only a structure with room for its level can anchor (`_has_room`)."""
    candidates = [s for i, s in enumerate(chain) if _has_room(i, len(chain), order.labels.index(s.majority), order)]
    anchored = [s for s in candidates if s.majority == order.anchor]
    if anchored:
        return max(anchored, key=lambda s: s.size), "anchor class"
    if probabilities is not None and candidates:
        return max(candidates, key=lambda s: sum(float(probabilities[s.majority][p.box][p.mask].sum())
                                                 for p in s.pieces) / s.size), "most confident"
    return None, "majority vote"


def _has_room(i: int, n: int, level: int, order: LevelOrder) -> bool:
    """Whether chain position i (of n) can hold order level `level`: no more structures on either side than the
    order has levels there, plus MAX_SKIPPED that may be left out. A blob labelled as the sacrum above the whole
    spine cannot anchor the count (fixing it would leave every level below it out)."""
    return i <= level + MAX_SKIPPED and n - 1 - i <= len(order.labels) - 1 - level + MAX_SKIPPED


def _same_level(a: _Structure, b: _Structure, height: Dict[int, float]) -> bool:
    """Whether two structures may be pieces of one level: one kind, centroids less than its typical height apart
    along the axis (two whole levels of a kind cannot be that close)."""
    return a.kind == b.kind and abs(a.t - b.t) < height[a.kind]


def _align(chain: List[_Structure], space: "_Space", order: LevelOrder, height: Dict[int, float],
           fixed: Optional[_Structure]) -> Dict[_Structure, int]:
    """Step 4: the level index of each chain structure (absent: not placed), by dynamic programming over the chain.

    Placed levels rise along the chain by an advance the surface gap allows (`_fits`), or stay (two pieces of one
    level, `_same_level`); up to MAX_SKIPPED structures in a row may be left out between placed ones (never making
    room for more levels than counting through them); `fixed` is placed at its majority label. Of these assignments the one that changes the fewest voxels wins: a voxel costs
    1 when its structure gets a level other than the voxel's label and SKIP_COST when its structure is left out.
    """
    n, size = len(chain), [s.size for s in chain]
    counts = [sum((Counter(p.counts) for p in s.pieces), Counter()) for s in chain]
    levels = [[j for j, label in enumerate(order.labels) if (label in order.discs) == (s.kind == DISC)] for s in chain]
    if fixed is not None:
        levels[chain.index(fixed)] = [order.labels.index(fixed.majority)]
    fixed_at = chain.index(fixed) if fixed is not None else -1

    def left_out(i: int, j: int) -> float:  # the cost of leaving out chain[i:j]
        return np.inf if i <= fixed_at < j else SKIP_COST * sum(size[i:j])

    moves = {}  # (a, b) -> level differences allowed from chain[a] to chain[b] with everything between left out
    for b in range(n):
        for a in range(b - 1, max(0, b - MAX_SKIPPED - 1) - 1, -1):
            moves[a, b] = [d for d, _ in _fits(space.gap(chain[a], chain[b]), chain[a].kind, chain[b].kind, height)]
            if a < b - 1:  # leaving structures out may remove positions (a spurious blob), never add room for more
                through = sum(min(moves[k, k + 1]) for k in range(a, b))
                moves[a, b] = [d for d in moves[a, b] if d <= through]
            if _same_level(chain[a], chain[b], height):
                moves[a, b].append(0)
    best, back = {}, {}  # (i, level) -> cost of chain[:i + 1] with chain[i] placed there; its predecessor
    for b in range(n):
        for level in levels[b]:
            cost, prev = left_out(0, b), None  # everything before b left out
            for a in range(max(0, b - MAX_SKIPPED - 1), b):
                for d in moves[a, b]:
                    c = best.get((a, level - d), np.inf) + left_out(a + 1, b)
                    if c < cost:
                        cost, prev = c, (a, level - d)
            best[(b, level)] = cost + size[b] - counts[b][order.labels[level]]
            back[(b, level)] = prev
    end = min(best, key=lambda k: (best[k] + left_out(k[0] + 1, n), k))
    placed, key = {}, end
    while key is not None:
        placed[chain[key[0]]] = key[1]
        key = back[key]
    return placed


def order_levels(labels, order: LevelOrder, probabilities=None, spine_axis: Optional[int] = None,
                 ignore_value: Optional[int] = None, spacing: Optional[Sequence[float]] = None):
    """Relabel the vertebrae and discs of an integer label map (2D or 3D) by their order along the spine.

    probabilities: optional (C, *labels.shape) class probabilities, channel = label value (anchor without the
    anchor class). spine_axis: an image axis to order along (default: principal axis of the component centroids).
    ignore_value: written where a component cannot be placed (None: leave it). spacing: voxel size per axis.
    Returns (new label map, report); the report counts "components" (of vertebra and disc classes), "specks",
    "structures", "placed" structures, "ignored" components and their voxels ("ignored_voxels"; set to
    ignore_value, or left when it is None), "changed_voxels", "relabelled" [(majority label, new label), ...] and
    "anchor" ({"label", "rule"} or None). The module docstring describes the algorithm.
    """
    labels = np.asarray(labels)
    if labels.ndim not in (2, 3) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"expected a 2D or 3D integer label map, got {labels.ndim}D {labels.dtype}")
    if probabilities is not None:
        probabilities = np.asarray(probabilities)
        if probabilities.shape[1:] != labels.shape or probabilities.shape[0] <= max(order.labels):
            raise ValueError(f"probabilities of shape {probabilities.shape} do not fit labels {labels.shape} and "
                             f"label values up to {max(order.labels)}")
    if ignore_value is not None and np.array(ignore_value).astype(labels.dtype) != ignore_value:
        raise ValueError(f"ignore_value {ignore_value} does not fit the label map's type {labels.dtype}")
    spacing_ = np.ones(labels.ndim) if spacing is None else np.asarray(spacing, dtype=float)
    report = {"components": 0, "specks": 0, "structures": 0, "placed": 0, "ignored": 0, "ignored_voxels": 0,
              "changed_voxels": 0, "relabelled": [], "anchor": None}
    kind_masks = {k: np.isin(labels, [i for i in order.labels if (i in order.discs) == (k == DISC)])
                  for k in (VERTEBRA, DISC)}
    pieces = _pieces(kind_masks, labels, spacing_)
    specks = _below_fraction(pieces, SPECK_FRACTION)
    candidates, unplaced, n_isolated, structures = [p for p in pieces if p not in specks], list(specks), 0, []
    limit = MAX_PIECES_PER_LEVEL * len(order.labels)
    if len(candidates) > limit:  # too fragmented to count every piece: the largest only (cost grows as pieces^2)
        candidates.sort(key=lambda p: -p.size)
        unplaced += candidates[limit:]
        candidates = candidates[:limit]
    for _ in range(2 if candidates else 0):  # with isolated structures: once more without them
        big = [p for p in candidates if p not in _below_fraction(candidates, FRAGMENT_FRACTION)]
        axis = _axis_vector(big, spine_axis, labels.ndim)
        for p in pieces:
            p.t = -float(p.centroid @ axis)  # increasing index is caudal unless the labels say otherwise
        step = _step(big)
        space = _Space(labels.shape, spacing_, [_Structure(p.kind, [p]) for p in big])
        height = {k: float(np.median([space.thickness(s) for s in space.id if s.kind == k] or [np.nan]))
                  for k in (VERTEBRA, DISC)}
        for k in (VERTEBRA, DISC):  # a kind without whole structures: typical proportions
            if np.isnan(height[k]):
                height[k] = height[1 - k] * (DISC_TO_VERTEBRA if k == DISC else 1 / DISC_TO_VERTEBRA)
        structures = _group(candidates, {k: kind_masks[1 - k] for k in (0, 1)}, spacing_, height, step)
        space = _Space(labels.shape, spacing_, structures)
        isolated = [s for s in structures if len(structures) > 1 and np.isfinite(step)
                    and space.isolated(s, ISOLATION_STEPS * step)]
        structures = [s for s in structures if s not in isolated]
        unplaced += [p for s in isolated for p in s.pieces]
        n_isolated += len(isolated)
        candidates = [p for s in structures for p in s.pieces]
        if not isolated:
            break
    fragments = _below_fraction(structures, FRAGMENT_FRACTION)
    chain = [s for s in structures if s not in fragments]
    if not chain:  # nothing to order, or nothing but isolated structures
        return _finish(labels, report, len(pieces), unplaced, {}, ignore_value, len(specks), n_isolated)
    index, position = np.array([order.labels.index(s.majority) for s in chain]), np.array([s.t for s in chain])
    if len(chain) > 1 and index.std() > 0 and position.std() > 0 and np.corrcoef(position, index)[0, 1] < 0:
        for p in pieces:
            p.t = -p.t
    chain.sort(key=lambda s: s.t)
    for a, b in zip(chain[::-1][1:], chain[::-1]):  # neighbours both labelled as the anchor: one anchor in pieces
        if a.majority == b.majority == order.anchor:
            a.pieces, b.pieces = a.pieces + b.pieces, []
    chain, structures = [s for s in chain if s.pieces], [s for s in structures if s.pieces]
    space = _Space(labels.shape, spacing_, structures)
    anchor, rule = _anchor(chain, order, probabilities)
    pos = _align(chain, space, order, height, anchor)
    if anchor is None:  # the labels decided: report the largest structure that kept its label
        kept = [s for s in pos if order.labels[pos[s]] == s.majority]
        anchor = max(kept or list(pos), key=lambda s: s.size)
    left = set(fragments)
    while left:  # outwards from the chain: the fragment nearest to a placed structure first
        _, _, f, near = min(((space.gap(s, f), id(f), f, s) for f in left
                             for s in sorted(pos, key=lambda s: abs(s.t - f.t))[:3]), key=lambda g: g[:2])
        left.discard(f)
        piece_of = [s for s in pos if _same_level(s, f, height)]
        if piece_of:  # a piece of a placed level of its kind
            pos[f] = pos[min(piece_of, key=lambda s: abs(s.t - f.t))]
            continue
        move, misfit = _advance(space.gap(near, f), near.kind, f.kind, height)
        target = pos[near] + (move if f.t > near.t else -move)
        if misfit <= FIT_TOLERANCE * min(height.values()) and target not in pos.values():
            pos[f] = target
    levels = {}
    for s in structures:
        level = pos.get(s, -1)
        if 0 <= level < len(order.labels):
            levels[s] = order.labels[level]
            if levels[s] != s.majority:
                report["relabelled"].append((s.majority, levels[s]))
        else:
            unplaced += s.pieces
    report["anchor"] = {"label": anchor.majority, "rule": rule}
    return _finish(labels, report, len(pieces), unplaced, levels, ignore_value, len(specks),
                   len(structures) + n_isolated)


def _finish(labels, report, n_pieces, unplaced, levels, ignore_value, n_specks, n_structures):
    """Step 6: the new label map, and the report completed."""
    out = labels.copy()
    for s, label in levels.items():
        for p in s.pieces:
            out[p.box][p.mask] = label
    for p in unplaced if ignore_value is not None else []:
        out[p.box][p.mask] = ignore_value
    report.update(components=n_pieces, specks=n_specks, structures=n_structures, placed=len(levels),
                  ignored=len(unplaced), ignored_voxels=sum(p.size for p in unplaced),
                  changed_voxels=int((out != labels).sum()))
    return out, report


def _centroid(mask: np.ndarray, spacing: np.ndarray) -> Optional[np.ndarray]:
    return np.argwhere(mask).mean(0) * spacing if mask.any() else None


def levels_correctly_placed(pred, ref, order: LevelOrder, spacing: Optional[Sequence[float]] = None) -> bool:
    """Whether `pred` names every level of `ref` at the right place.

    True when every label of `order` present in `ref` is present in `pred`, and the centroid of its voxels in
    `pred` is nearer (Euclidean, in `spacing` units) to the centroid of that label in `ref` than to the centroid
    of any other label of the order present in `ref`. Levels only in `pred` do not count; a `ref` without any label
    of the order gives True.
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"pred {pred.shape} and ref {ref.shape} differ in shape")
    spacing_ = np.ones(ref.ndim) if spacing is None else np.asarray(spacing, dtype=float)
    ref_centroids = {i: c for i in order.labels if (c := _centroid(ref == i, spacing_)) is not None}
    for label in ref_centroids:
        c = _centroid(pred == label, spacing_)
        if c is None or min(ref_centroids, key=lambda i: np.linalg.norm(c - ref_centroids[i])) != label:
            return False
    return True
