//! Star coloring of a symmetric pattern, and the direct decompression it allows.
//!
//! Columns of one color share a Hessian-vector product: with seeds `S[c, k] = 1` where
//! `color(k) == c`, the compressed `B = S H` holds in `B[c, r]` the sum of `H[r, k]` over the
//! columns `k` of color `c`. A *star* coloring (a distance-1 coloring in which every path on
//! four vertices uses at least three colors; Gebremedhin, Tarafdar, Manne and Pothen 2007,
//! Algorithm 4.1, as in SparseMatrixColorings.jl) makes every nonzero readable directly:
//! `H[r, j]` is `B[color(j), r]` when `j` is the only neighbor of `r` of its color, and
//! `B[color(r), j]` otherwise; diagonal entries are `B[color(r), r]`. Every value is one
//! entry of one product: no subtraction, so the recovery is exact.

use crate::error::{Error, Result};

const NONE: usize = usize::MAX;

/// A symmetric pattern's adjacency (no diagonal): the neighbors of `v` are
/// `neighbors[start[v]..start[v + 1]]`, and `edge[slot]` numbers each undirected edge once.
pub(crate) struct Graph {
    pub start: Vec<usize>,
    pub neighbors: Vec<usize>,
    pub edge: Vec<usize>,
    pub edges: usize,
}

impl Graph {
    /// The graph of the off-diagonal entries of an upper-triangular pattern (sorted pairs
    /// `(row, col)` with `row <= col`) over `n` vertices.
    pub fn from_upper(n: usize, upper: &[(u32, u32)]) -> Graph {
        let mut degree = vec![0usize; n + 1];
        for &(r, c) in upper {
            if r != c {
                degree[r as usize] += 1;
                degree[c as usize] += 1;
            }
        }
        let mut start = vec![0usize; n + 1];
        for v in 0..n {
            start[v + 1] = start[v] + degree[v];
        }
        let mut fill = start.clone();
        let mut neighbors = vec![0usize; start[n]];
        let mut edge = vec![0usize; start[n]];
        let mut edges = 0;
        // Rows come in increasing order, so every neighbor list ends up sorted.
        for &(r, c) in upper {
            let (r, c) = (r as usize, c as usize);
            if r == c {
                continue;
            }
            for (from, to) in [(r, c), (c, r)] {
                neighbors[fill[from]] = to;
                edge[fill[from]] = edges;
                fill[from] += 1;
            }
            edges += 1;
        }
        Graph {
            start,
            neighbors,
            edge,
            edges,
        }
    }

    fn adjacent(&self, v: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
        (self.start[v]..self.start[v + 1]).map(|s| (self.neighbors[s], self.edge[s]))
    }

    fn vertices(&self) -> usize {
        self.start.len() - 1
    }
}

/// A star coloring, vertices in natural order: `color[v]` for each vertex, and the number
/// of colors.
pub(crate) fn star_coloring(graph: &Graph) -> (Vec<usize>, usize) {
    let n = graph.vertices();
    let mut color = vec![NONE; n];
    // forbidden[c] == v: color c is forbidden for vertex v (stamps avoid clearing).
    let mut forbidden = vec![NONE; n + 1];
    let mut treated = vec![NONE; n];
    // Per color, the first neighbor of that color met from the vertex being colored.
    let mut first_neighbor = vec![(NONE, NONE, NONE); n + 1];
    let mut star = vec![NONE; graph.edges];
    // The hub of each star: a vertex, or `None` for a star of one edge.
    let mut hub: Vec<Option<usize>> = Vec::new();
    let colored = |color: &[usize], v: usize| color[v] != NONE;

    for v in 0..n {
        let treat = |w: usize, color: &[usize], forbidden: &mut [usize], treated: &mut [usize]| {
            for (x, _) in graph.adjacent(w) {
                if color[x] != NONE {
                    forbidden[color[x]] = v;
                }
            }
            treated[w] = v;
        };
        for (w, e_vw) in graph.adjacent(v) {
            if !colored(&color, w) {
                continue;
            }
            let cw = color[w];
            forbidden[cw] = v;
            let (p, q, _) = first_neighbor[cw];
            if p == v {
                // A second neighbor of color cw: no neighbor of either may share a color.
                if treated[q] != v {
                    treat(q, &color, &mut forbidden, &mut treated);
                }
                treat(w, &color, &mut forbidden, &mut treated);
            } else {
                first_neighbor[cw] = (v, w, e_vw);
                for (x, e_wx) in graph.adjacent(w) {
                    if x == v || !colored(&color, x) {
                        continue;
                    }
                    // x is the hub of the star holding w-x: v-w-x-y would be bicolored.
                    if hub[star[e_wx]] == Some(x) {
                        forbidden[color[x]] = v;
                    }
                }
            }
        }
        let mut c = 0;
        while forbidden[c] == v {
            c += 1;
        }
        color[v] = c;

        // Join v's new edges to the stars they extend.
        for (w, e_vw) in graph.adjacent(v) {
            if !colored(&color, w) {
                continue;
            }
            let same = graph
                .adjacent(w)
                .find(|&(x, _)| x != v && color[x] == color[v]);
            if let Some((_, e_wx)) = same {
                let s = star[e_wx];
                hub[s] = Some(w);
                star[e_vw] = s;
                continue;
            }
            let (p, q, e_pq) = first_neighbor[color[w]];
            if p == v && q != w {
                let s = star[e_pq];
                hub[s] = Some(v);
                star[e_vw] = s;
            } else {
                hub.push(None);
                star[e_vw] = hub.len() - 1;
            }
        }
    }
    let colors = color.iter().map(|&c| c + 1).max().unwrap_or(0);
    (color, colors)
}

/// For each entry of a symmetric pattern given as full rows (`row_start`, `cols`, sorted
/// columns, diagonal included where present), where its value is in the compressed
/// products: `(color, vertex)`, meaning `B[color, vertex]`. An error if the coloring does
/// not allow reading some entry directly (which a star coloring always does).
pub(crate) fn sources(
    row_start: &[usize],
    cols: &[usize],
    color: &[usize],
    colors: usize,
) -> Result<Vec<(usize, usize)>> {
    let n = row_start.len() - 1;
    let row = |v: usize| &cols[row_start[v]..row_start[v + 1]];
    // unique[slot] for entry (r, j): j is the only column of row r with color(j) (the
    // diagonal counts), so B[color(j), r] holds H[r, j] alone. Counts are kept per row in
    // stamped arrays.
    let mut stamp = vec![NONE; colors];
    let mut count = vec![0usize; colors];
    let mut unique = vec![false; cols.len()];
    for r in 0..n {
        for &k in row(r) {
            if stamp[color[k]] != r {
                stamp[color[k]] = r;
                count[color[k]] = 0;
            }
            count[color[k]] += 1;
        }
        for (slot, &j) in row(r).iter().enumerate() {
            unique[row_start[r] + slot] = j != r && count[color[j]] == 1;
        }
    }
    let mut out = Vec::with_capacity(cols.len());
    for r in 0..n {
        for (slot, &j) in row(r).iter().enumerate() {
            if j == r {
                out.push((color[r], r));
            } else if unique[row_start[r] + slot] {
                out.push((color[j], r));
            } else {
                // By symmetry H[r, j] = H[j, r]: read it from row j if r is unique there.
                let mirror = row(j).binary_search(&r).map(|s| row_start[j] + s);
                match mirror {
                    Ok(s) if unique[s] => out.push((color[r], j)),
                    _ => {
                        return Err(Error::Trace(format!(
                            "sparse hessian: the coloring does not separate entry ({r}, {j})"
                        )));
                    }
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator for random patterns.
    struct Lcg(u64);
    impl Lcg {
        fn below(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((self.0 >> 33) as usize) % n
        }
    }

    fn full_rows(n: usize, upper: &[(u32, u32)]) -> (Vec<usize>, Vec<usize>) {
        let mut rows: Vec<Vec<usize>> = vec![Vec::new(); n];
        for &(r, c) in upper {
            rows[r as usize].push(c as usize);
            if r != c {
                rows[c as usize].push(r as usize);
            }
        }
        let mut start = vec![0];
        let mut cols = Vec::new();
        for row in &mut rows {
            row.sort_unstable();
            cols.extend(row.iter());
            start.push(cols.len());
        }
        (start, cols)
    }

    /// No path on four vertices is bicolored, and neighbors differ in color.
    fn is_star_coloring(graph: &Graph, color: &[usize]) -> bool {
        let n = graph.vertices();
        for a in 0..n {
            for (b, _) in graph.adjacent(a) {
                if color[a] == color[b] {
                    return false;
                }
                for (c, _) in graph.adjacent(b) {
                    if c == a || color[c] != color[a] {
                        continue;
                    }
                    for (d, _) in graph.adjacent(c) {
                        if d != b && color[d] == color[b] {
                            return false;
                        }
                    }
                }
            }
        }
        true
    }

    #[test]
    fn a_tridiagonal_pattern_takes_three_colors() {
        let n = 10;
        let upper: Vec<(u32, u32)> = (0..n as u32)
            .flat_map(|i| [(i, i), (i, i + 1)])
            .filter(|&(_, c)| c < n as u32)
            .collect();
        let graph = Graph::from_upper(n, &upper);
        let (color, colors) = star_coloring(&graph);
        assert_eq!(colors, 3);
        assert!(is_star_coloring(&graph, &color));
        // Half-bandwidth 2: 2k + 1 = 5 colors.
        let band: Vec<(u32, u32)> = (0..n as u32)
            .flat_map(|i| (i..(i + 3).min(n as u32)).map(move |j| (i, j)))
            .collect();
        let graph = Graph::from_upper(n, &band);
        let (color, colors) = star_coloring(&graph);
        assert_eq!(colors, 5);
        assert!(is_star_coloring(&graph, &color));
    }

    #[test]
    fn random_patterns_are_star_colored_and_decompress_exactly() {
        let mut rng = Lcg(7);
        for trial in 0..200 {
            let n = 2 + rng.below(25);
            let density = 1 + rng.below(4);
            let mut upper = Vec::new();
            for r in 0..n {
                if rng.below(3) > 0 {
                    upper.push((r as u32, r as u32));
                }
                for c in r + 1..n {
                    if rng.below(2 * n) < density {
                        upper.push((r as u32, c as u32));
                    }
                }
            }
            let graph = Graph::from_upper(n, &upper);
            let (color, colors) = star_coloring(&graph);
            assert!(is_star_coloring(&graph, &color), "trial {trial}");
            // A random symmetric matrix of this pattern, compressed and recovered.
            let (start, cols) = full_rows(n, &upper);
            let value = |r: usize, c: usize| ((r.min(c) * 31 + r.max(c) * 17) % 13) as f64 + 1.0;
            let mut b = vec![0.0; colors * n];
            for r in 0..n {
                for &c in &cols[start[r]..start[r + 1]] {
                    b[color[c] * n + r] += value(r, c);
                }
            }
            let src = sources(&start, &cols, &color, colors).unwrap();
            for r in 0..n {
                for (slot, &c) in cols[start[r]..start[r + 1]].iter().enumerate() {
                    let (k, v) = src[start[r] + slot];
                    assert_eq!(b[k * n + v], value(r, c), "trial {trial} entry ({r}, {c})");
                }
            }
        }
    }

    #[test]
    fn a_coloring_that_merges_neighbors_is_refused() {
        // A path 0-1-2 with a diagonal: one color for all sums H[0, 0] and H[0, 1] together.
        let upper = [(0, 0), (0, 1), (1, 1), (1, 2), (2, 2)];
        let (start, cols) = full_rows(3, &upper);
        assert!(sources(&start, &cols, &[0, 0, 0], 1).is_err());
        // Without the diagonal, each entry is alone in its row's color.
        let (start, cols) = full_rows(3, &[(0, 1), (1, 2)]);
        assert!(sources(&start, &cols, &[0, 0, 0], 1).is_ok());
    }
}
