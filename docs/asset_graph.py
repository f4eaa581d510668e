"""Draw TADS's asset graph to docs/asset_graph.png: a layered left-to-right DAG, one colour per asset group.

Run from the repository root: `.venv/bin/python docs/asset_graph.py`. It reads the graph from `definitions.defs`
(Dagster's own view of the code location), so the picture follows the code. Matplotlib only (no graphviz):
longest-path layers, long edges routed through one waypoint per layer they cross, layers ordered by barycentres.
"""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch  # noqa: E402
from matplotlib.path import Path as MplPath  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from definitions import defs  # noqa: E402

COLOURS = {"pool": "#8ecae6", "characterize": "#ffd166", "select": "#95d5b2", "train_eval": "#f4a3a8"}
X_GAP, W, H, SLOT, WAY = 2.6, 1.9, 0.5, 1.0, 0.22  # layer pitch, box size, height of a box's / a waypoint's slot

graph = defs.resolve_asset_graph()
nodes = {k.to_user_string(): graph.get(k) for k in graph.get_all_asset_keys()}
parents = {n: sorted(p.to_user_string() for p in node.parent_keys) for n, node in nodes.items()}
layer: dict = {}
def depth(n):  # longest path from a source
    if n not in layer:
        layer[n] = 1 + max((depth(p) for p in parents[n]), default=-1)
    return layer[n]
[depth(n) for n in nodes]
for n in nodes:  # a source sits just left of its first consumer, not at the far left
    if not parents[n] and any(n in parents[c] for c in nodes):
        layer[n] = min(layer[c] for c in nodes if n in parents[c]) - 1

chains = [[p] + [(p, n, i) for i in range(layer[p] + 1, layer[n])] + [n] for n in nodes for p in parents[n]]
layer.update({w: w[2] for chain in chains for w in chain[1:-1]})  # waypoints: (parent, child, layer)
up, down = ({v: [] for v in layer} for _ in range(2))
for a, b in ((a, b) for chain in chains for a, b in zip(chain, chain[1:])):
    down[a].append(b), up[b].append(a)
slot = lambda v: SLOT if isinstance(v, str) else WAY  # noqa: E731
layers = [sorted((v for v in layer if layer[v] == i), key=str) for i in range(max(layer.values()) + 1)]
y = {v: -float(j) for col in layers for j, v in enumerate(col)}
def place(col, adj):  # order a layer by the mean height of its neighbours in the layer just placed, then stack it
    col.sort(key=lambda v: -sum(y[u] for u in adj[v]) / len(adj[v]) if adj[v] else -y[v])
    top = sum(map(slot, col)) / 2
    for v in col:
        y[v], top = top - slot(v) / 2, top - slot(v)
for _ in range(6):  # Sugiyama sweeps: left to right by parents, right to left by children
    for col in layers[1:]:
        place(col, up)
    for col in layers[-2::-1]:
        place(col, down)
x = {v: layer[v] * X_GAP for v in layer}

fig, ax = plt.subplots(figsize=(len(layers) * 1.6, 1.6 + 0.9 * max(sum(map(slot, col)) for col in layers)))
for chain in chains:  # cubic pieces leaving and entering each point level, as in Dagster's UI
    pts = [(x[chain[0]] + W / 2, y[chain[0]])] + [(x[w] + dx, y[w]) for w in chain[1:-1] for dx in (-W / 2, W / 2)]
    pts += [(x[chain[-1]] - W / 2, y[chain[-1]])]  # a waypoint runs level across its layer, so no box hides it
    verts, codes = [pts[0]], [MplPath.MOVETO]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        d = 0.45 * (x1 - x0)
        verts += [(x0 + d, y0), (x1 - d, y1), (x1, y1)]
        codes += [MplPath.CURVE4] * 3
    ax.add_patch(FancyArrowPatch(path=MplPath(verts, codes), arrowstyle="-|>", mutation_scale=9, color="#555555",
                                 lw=0.8, alpha=0.8, zorder=1))
for n, node in nodes.items():
    ax.add_patch(FancyBboxPatch((x[n] - W / 2, y[n] - H / 2), W, H, boxstyle="round,pad=0.02,rounding_size=0.12",
                                fc=COLOURS.get(node.group_name, "#dddddd"), ec="#333333", zorder=2,
                                lw=1.0, ls="--" if node.is_partitioned else "-"))
    ax.text(x[n], y[n], n, ha="center", va="center", fontsize=8, zorder=3)
ax.legend(handles=[Patch(fc=c, ec="#333333", label=f"group {g}") for g, c in COLOURS.items()]
          + [Patch(fc="white", ec="#333333", ls="--", label="partitioned")],
          loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=5, frameon=False, fontsize=9)
ax.set_xlim(min(x.values()) - W, max(x.values()) + W)
ax.set_ylim(min(y.values()) - 0.6, max(y.values()) + 0.6)
ax.set_axis_off()
fig.tight_layout()
out = REPO / "docs" / "asset_graph.png"
fig.savefig(out, dpi=130, bbox_inches="tight")
print(f"{out.relative_to(REPO)}: {len(nodes)} assets, {len(chains)} edges")
