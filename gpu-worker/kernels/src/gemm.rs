//! The encoder's dense layers: `x · W + b`, then GELU or a residual added, in one pass over
//! the output, with `W` packed once at load.
//!
//! - **Packed weights.** [`PackedMatrix`] stores `W` (`[k, n]`) as column panels two
//!   vectors wide (32 floats on AVX-512), each panel's `k` rows contiguous: the kernel reads
//!   a panel front to back, the bias beside it padded to whole panels. Nothing is packed per
//!   call: the inputs are read in place. (Packing each block's rows interleaved, so a tile
//!   reads one stream instead of one a row, was measured on a Zen 3 EPYC with both paths
//!   in one process, in turn, on one and two threads: packed / in place, 128 rows 0.89–1.00
//!   on the best of 15–25 rounds, 1.00–1.04 on the median; 1,024 rows 0.96–1.02 and
//!   0.95–1.14 — level, and not kept.)
//! - **Register tiles.** A tile of up to [`tile_rows`] rows by one panel is accumulated in
//!   registers over the whole of `k` (two accumulators per row: 24 independent FMA chains
//!   on AVX-512), each step one broadcast per row and two vector loads of the panel. On
//!   AVX-512 the tiles of more than [`SPREAD_ROWS`] rows, and those fetching ahead, run
//!   their loop in assembly ([`tile_avx512`]: the form the optimiser would not keep;
//!   MiniLM-L6's products at 128 and 1,024 rows 6–10 % faster on an Intel Xeon).
//! - **Epilogue in registers.** Bias, GELU or the residual are applied to the accumulators
//!   before they are stored: the product's output is written once and never read back by a
//!   separate pass.
//! - **Tasks by size.** Up to [`PANEL_SPLIT_ROWS`] rows, the panels are shared out in
//!   [`GROUPS_PER_THREAD`] groups per pool thread and every task computes all rows (the
//!   weights are streamed from memory once, whatever the batch); above, the rows are split
//!   into chunks of [`ROW_CHUNK`], and on AVX-512 each chunk goes through every panel one
//!   block of rows at a time (the block's inputs stay in L1 while the panels stream past;
//!   panel by panel, each block's inputs were read again from L2 for every panel).
//! - **Weights fetched ahead.** While the first block of rows
//!   multiplies a panel, the next panel's rows (after a task's last, the next task's first)
//!   are prefetched into L2, one line a step: with few rows (a batch of one short sentence)
//!   the weights stream from memory once a pass and are what the tiles wait for (12 rows on
//!   one AVX2 core: 26.6 → 31.6 GFLOP/s over a model's products). The AVX-512 tiles fetch
//!   from 6 rows ([`WIDE_FETCH_MIN_ROWS`]: measured to pay on an Intel Xeon and on AMD's
//!   Zen 5), except on AMD's Zen 4, where it was measured to cost ([`FETCH_AHEAD_LANES`]).
//!
//! - **Weights on huge pages (Linux).** Each packed matrix starts on a 2 MB boundary and
//!   asks the kernel for transparent huge pages ([`weight_storage`]): a pass reads every
//!   weight once, and on 4 KB pages that is a TLB miss every 4 KB — on a virtual machine, a
//!   walk through two levels of page tables.
//!
//! Tasks write their tiles through disjoint row slices of the output; the prefetch hint and
//! the two pieces of memory advice are the `unsafe` statements.

use rayon::prelude::*;

use super::cpu::Cpu;
use super::isa::Isa;
use super::math::gelu_simd;

/// Rows up to which a product splits its columns among threads rather than its rows.
const PANEL_SPLIT_ROWS: usize = 256;

/// Panel groups per thread when a product splits its columns: with one group per thread, a
/// thread that picks its task up late holds the others up at the join; with several, the
/// threads that started first take more of them (batch 1 × short: +20 % with 4, 8 no better).
/// Measured again on a 2-core Xeon (family 6, model 167), with every tile's next panel
/// fetched across the groups' bounds (see [`product`]): one group a thread was as fast on
/// a quiet host, but in two of six 40-round runs at 1 × short its median round fell to
/// 0.60–0.66 of ONNX Runtime's, where 4 groups' medians were 0.92–1.15 — with one group a
/// thread, a product waits for its slower thread's whole share.
const GROUPS_PER_THREAD: usize = 4;

/// Rows per task when a product splits its rows: whole tiles on every instruction set (6 of
/// 12 rows on AVX-512, 12 of 6 on AVX2; 64 left tiles of 11 rows, and measured 2–8 % slower
/// at 8 × 128 and 32 × short).
const ROW_CHUNK: usize = 72;

/// Widest panel any instruction set packs (two 16-lane vectors).
pub(super) const MAX_PANEL: usize = 32;

/// A weight matrix `W` (`[k, n]`, for `x · W`) and its bias, packed for [`matmul`] on one
/// instruction set.
#[derive(Debug, Clone)]
pub struct PackedMatrix {
    /// Columns per panel: two vectors of the instruction set it was packed for.
    panel: usize,
    k: usize,
    n: usize,
    /// Panel after panel, each `[k][panel]`, from `start` (see [`weight_storage`]); columns
    /// past `n` are zero.
    panels: Vec<f32>,
    start: usize,
    /// The bias, zero-padded to whole panels.
    bias: Vec<f32>,
}

/// A transparent huge page on x86-64 Linux.
#[cfg(target_os = "linux")]
const HUGE_PAGE: usize = 2 << 20;
/// A base page on x86-64 Linux.
#[cfg(target_os = "linux")]
const PAGE: usize = 4 << 10;

/// Zeroed storage for `len` floats, and where in it they start: on Linux, at a 2 MB
/// boundary, with the kernel asked (`madvise(MADV_HUGEPAGE)`, which a system whose
/// transparent huge pages are `madvise` or `always` honours) to back them with huge pages.
/// The advice covers whole huge pages only: the matrix's size rounded up when that wastes
/// at most a quarter of it, else rounded down (the tail on 4 KB pages); MiniLM-L6's 42 MB
/// of weights: some 35 MB on huge pages, 1.4 MB of padding resident. The zeros written
/// before the boundary are handed back (`MADV_DONTNEED`). Where the kernel declines, the
/// storage is ordinary memory and nothing else changes.
///
/// Measured on a 2-core Zen 3 EPYC guest (MiniLM-L6 loaded twice in one process, once each
/// way, the two called in turn, 30–6,000 calls each): the median call, huge / 4 KB pages,
/// 1 short sentence 0.90, 8 short 0.98, 1 × 128 tokens 0.97, 32 × 128 0.99 (an earlier
/// try that rounded every matrix up: 0.89, 0.98, 0.98).
fn weight_storage(len: usize) -> (Vec<f32>, usize) {
    #[cfg(target_os = "linux")]
    {
        // Room to start at the next boundary and to round up to a whole huge page (left
        // untouched, the room takes no memory).
        let floats = HUGE_PAGE / size_of::<f32>();
        let mut storage: Vec<f32> = Vec::with_capacity(len.next_multiple_of(floats) + floats);
        let at = storage.as_ptr() as usize;
        let aligned = at.next_multiple_of(HUGE_PAGE);
        let start = (aligned - at) / size_of::<f32>();
        let bytes = len * size_of::<f32>();
        let up = bytes.next_multiple_of(HUGE_PAGE);
        let advised = if 4 * (up - bytes) <= bytes {
            up
        } else {
            bytes / HUGE_PAGE * HUGE_PAGE
        };
        if advised > 0 {
            // SAFETY: advice about pages of this vector's own allocation (from the first
            // boundary in it, at most `len` floats rounded up to a huge page: within the
            // capacity asked for above); it changes how they are backed, never their contents.
            #[allow(unsafe_code)]
            let _declined = unsafe {
                libc::madvise(aligned as *mut libc::c_void, advised, libc::MADV_HUGEPAGE)
            };
        }
        // Zeroed after the advice: the first writes fault the huge pages in.
        storage.resize(start + len, 0.0);
        // The zeros before the boundary are never read: their pages are handed back
        // (measured: 10–28 MB of MiniLM-L6's resident memory otherwise).
        let first_page = at.next_multiple_of(PAGE);
        if aligned > first_page {
            // SAFETY: whole pages inside this vector's own elements (before `start`; the
            // allocator's header lies before `at`), of private anonymous memory, where
            // MADV_DONTNEED leaves zeros — what was just written there — to be read back.
            #[allow(unsafe_code)]
            let _declined = unsafe {
                libc::madvise(
                    first_page as *mut libc::c_void,
                    aligned - first_page,
                    libc::MADV_DONTNEED,
                )
            };
        }
        (storage, start)
    }
    #[cfg(not(target_os = "linux"))]
    {
        (vec![0f32; len], 0)
    }
}

impl PackedMatrix {
    /// Packs row-major `w` (`[k, n]`) and `bias` (`[n]`) for `isa`.
    pub fn new(isa: Isa, w: &[f32], k: usize, n: usize, bias: &[f32]) -> Self {
        assert_eq!(w.len(), k * n, "weight is not [k, n]");
        assert_eq!(bias.len(), n, "bias is not [n]");
        let panel = 2 * isa.lanes();
        let count = n.div_ceil(panel);
        let (mut storage, start) = weight_storage(count * k * panel);
        for (p, packed) in storage[start..].chunks_exact_mut(k * panel).enumerate() {
            let (c0, c1) = (p * panel, ((p + 1) * panel).min(n));
            for (row, dst) in w.chunks_exact(n).zip(packed.chunks_exact_mut(panel)) {
                dst[..c1 - c0].copy_from_slice(&row[c0..c1]);
            }
        }
        let mut padded = vec![0f32; count * panel];
        padded[..n].copy_from_slice(bias);
        Self {
            panel,
            k,
            n,
            panels: storage,
            start,
            bias: padded,
        }
    }

    /// Input width `k`.
    pub fn inputs(&self) -> usize {
        self.k
    }

    /// Output width `n`.
    pub fn outputs(&self) -> usize {
        self.n
    }

    fn panel_count(&self) -> usize {
        self.view().count()
    }
}

/// What is done to `x · W` before it is stored.
#[derive(Debug, Clone, Copy)]
pub enum Epilogue<'a> {
    /// `x · W + b`.
    Bias,
    /// `GELU(x · W + b)` (exact, erf form).
    BiasGelu,
    /// `x · W + b + residual`, `residual` as `[rows, n]`.
    BiasResidual(&'a [f32]),
    /// `(x · W + b) · s[row]`, one factor a row (the attention's softmax normalisation,
    /// applied to its output rather than to every score).
    BiasScaleRows(&'a [f32]),
}

/// The widest vectors (in f32 lanes) whose tiles prefetch their next weight panel on every
/// CPU. Measured with `make bench-kernels` (MiniLM-L6's six layers, 42 MB of weights,
/// streamed from memory by small batches), both paths on one Zen 4 EPYC, two rounds each
/// way: the AVX2 tiles gain from it (6 rows 61–62 → 80–93 GFLOP/s, 12 rows 89–96 → 105–126,
/// 24 rows 123–131 → 138–154; on an AVX2-only first-generation Zen, 12 rows 26.6 → 31.6 on
/// one core), the AVX-512 tiles lose (6 rows 102–114 → 92–99, 12 rows 142–145 → 114–132, 24
/// rows 162–164 → 141–152): Zen 4 runs each 512-bit operation as two halves, its two-line
/// panel rows already keep the hardware's stream prefetcher ahead, and the hints only add
/// loads. Everywhere else measured the AVX-512 tiles fetch too, from [`WIDE_FETCH_MIN_ROWS`]
/// rows ([`Cpu::wide_fetch_pays`]).
const FETCH_AHEAD_LANES: usize = 8;

/// Rows from which AVX-512 tiles prefetch a packed weight matrix's next panel, where that
/// pays ([`Cpu::wide_fetch_pays`]). Measured on a 2-core Emerald Rapids Xeon (MiniLM-L6's six
/// layers' products, with and without in turn in one process, best of 9 rounds, two runs
/// each; GFLOP/s without → with): one thread, 6 rows 17–19 → 31–32, 12 rows 27 → 32–33, 16
/// rows 25 → 30–31, 24 rows 31 → 34–35, 128 rows 34–38 → 35–39, 1,024 rows level; two
/// threads 4–11 % more from 6 to 48 rows, above that level (128 rows +0 % and −8 %, 1,024
/// +2 %). With 1 or 3 rows it cost 6–12 % (each step is too short for the extra loads to
/// hide), so smaller products do without. On a 2-core Zen 5 EPYC (family 26, full-width
/// 512-bit units), two threads, the builds with and without in turn, three rounds each,
/// GFLOP/s: 6 rows 179–250 → 227–240, 12 rows 279–316 → 367–396, 24 rows 341–346 →
/// 419–438, 128 rows 459–469 → 471–491, 1,024 rows 463–476 → 469–484 (fetching from one row
/// there: 1 row 45–46 → 49, the rest no better than from 6).
const WIDE_FETCH_MIN_ROWS: usize = 6;

/// Whether the tiles of an instruction set of `lanes` f32 lanes prefetch their next panel,
/// in a product of `rows` rows; `streamed`: the weights are a [`PackedMatrix`] (streamed
/// from memory by small batches), not the attention's keys or values packed on the fly.
fn fetches_ahead(lanes: usize, rows: usize, streamed: bool) -> bool {
    lanes <= FETCH_AHEAD_LANES
        || (streamed && rows >= WIDE_FETCH_MIN_ROWS && Cpu::this().wide_fetch_pays())
}

/// Tiles of up to this many rows (every AVX2 tile), except those fetching the next panel,
/// address each input row from a register of its own. Left to itself the optimiser derives
/// the rows' addresses from the first, one addition a row every step (it sees that they lie
/// `lda` apart): the 6-row AVX2 step was 32–33 instructions around its 12 FMAs; with the
/// rows' starts hidden from it (`black_box`) it is 26, each row read at its start plus the
/// step. The FMAs set the pace on a quiet core either way (the best passes did not move);
/// on a busy host they do not: the fewer instructions a step, the less the tile loses
/// when another guest's thread shares the core's front end. MiniLM-L6 on a 2-core Zen 3
/// EPYC guest, 8 × 128 tokens, 60 rounds each of the old and new builds against ONNX
/// Runtime in the same process (`IHUB_BENCH_DIST`), two runs each, in turn: the median
/// round's worker / ONNX Runtime 0.88 and 0.92 → 0.94 and 0.96, the 25th percentile 0.78
/// and 0.85 → 0.87 and 0.92, the best round level (1 × short: median 1.32 → 1.43, no loss).
/// The fetching AVX2 tiles keep the derived addresses (the prefetch's registers leave too
/// few); so would the 7–12-row AVX-512 tiles (twelve row registers spilled the
/// accumulators), which [`tile_avx512`] runs instead. The AVX2 tiles that do not fetch run
/// [`tile_avx2`] from [`ASM_MIN_K`] inputs, fewer instructions again; this form remains
/// for shorter ones (the attention's queries × keys) and the scalar path.
const SPREAD_ROWS: usize = 6;

/// Rows per register tile on an instruction set of `lanes` f32 lanes: as many as the
/// vector registers hold two accumulators each for, with room for the panel and a broadcast.
const fn tile_rows(lanes: usize) -> usize {
    match lanes {
        16.. => 12,
        8.. => 6,
        _ => 4,
    }
}

/// `out = epilogue(a · W + b)`, `a` row-major `[rows, k]`, `out` `[rows, n]`.
pub fn matmul(isa: Isa, out: &mut [f32], a: &[f32], w: &PackedMatrix, epilogue: Epilogue<'_>) {
    let (k, n) = (w.k, w.n);
    assert_eq!(
        w.panel,
        2 * isa.lanes(),
        "weights packed for another instruction set"
    );
    assert!(k > 0 && a.len().is_multiple_of(k), "input is not [rows, k]");
    let m = a.len() / k;
    assert_eq!(out.len(), m * n, "output is not [rows, n]");
    match epilogue {
        Epilogue::BiasResidual(r) => assert_eq!(r.len(), m * n, "residual is not [rows, n]"),
        Epilogue::BiasScaleRows(s) => assert_eq!(s.len(), m, "not one factor a row"),
        Epilogue::Bias | Epilogue::BiasGelu => {}
    }
    if m == 0 {
        return;
    }
    let threads = rayon::current_num_threads().max(1);
    let panels = w.panel_count();
    // Tiles: a chunk of rows by a group of panels.
    let by_block = m > PANEL_SPLIT_ROWS;
    let (row_step, groups) = if by_block {
        (ROW_CHUNK, 1)
    } else {
        (m, (GROUPS_PER_THREAD * threads).min(panels))
    };
    // Groups as even as they divide, the larger ones spread out (36 panels in 8 groups:
    // 4, 5, 4, 5, ...): cut into ⌈36 / 8⌉ = 5 and a remainder, rayon's first split gave one
    // thread 20 panels and the other 16.
    let bounds: Vec<(usize, usize)> = (0..groups)
        .map(|g| (g * panels / groups, (g + 1) * panels / groups))
        .filter(|(p0, p1)| p0 < p1)
        .collect();
    // Each output row cut at the groups' column bounds, so each tile owns its pieces.
    let mut tiles: Vec<Tile<'_>> = Vec::with_capacity(m.div_ceil(row_step) * bounds.len());
    for (chunk, rows) in out.chunks_mut(row_step * n).enumerate() {
        let first = tiles.len();
        for &(p0, p1) in &bounds {
            tiles.push(Tile {
                row0: chunk * row_step,
                panels: p0..p1,
                rows: Vec::with_capacity(rows.len() / n),
            });
        }
        for row in rows.chunks_exact_mut(n) {
            let mut rest = row;
            for tile in &mut tiles[first..] {
                let width = (tile.panels.end * w.panel).min(n) - tile.panels.start * w.panel;
                let (piece, after) = rest.split_at_mut(width);
                tile.rows.push(piece);
                rest = after;
            }
        }
    }
    let run = |tile: Tile<'_>| {
        isa.run(Product {
            tile,
            a,
            w,
            epilogue,
            by_block,
        })
    };
    if tiles.len() == 1 {
        tiles.into_iter().for_each(run);
    } else {
        tiles.into_par_iter().for_each(run);
    }
}

/// Rows `row0..` of the output, columns of `panels`: one slice per row.
struct Tile<'a> {
    row0: usize,
    panels: std::ops::Range<usize>,
    rows: Vec<&'a mut [f32]>,
}

struct Product<'a, 't> {
    tile: Tile<'t>,
    a: &'a [f32],
    w: &'a PackedMatrix,
    epilogue: Epilogue<'a>,
    /// One block of rows at a time through every panel, rather than one panel at a time
    /// through every block.
    by_block: bool,
}

impl pulp::WithSimd for Product<'_, '_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let Product {
            mut tile,
            a,
            w,
            epilogue,
            by_block,
        } = self;
        let (m, k) = (tile.rows.len(), w.k);
        let a = &a[tile.row0 * k..(tile.row0 + m) * k];
        // Block order only where the tiles do not fetch the next panel ahead: the AVX2
        // fetch is timed for panel order, and there block order ran ≈ 4 % slower
        // (`make bench-kernels`, 1,024 rows); on the Intel Xeon, AVX-512 tiles fetching in
        // panel order were level with block order without it (1,024 rows, −2 % to +4 %).
        if !by_block || fetches_ahead(S::F32_LANES, m, true) {
            product(
                simd,
                &mut tile.rows,
                tile.row0,
                tile.panels,
                a,
                k,
                w.view(),
                epilogue,
            );
            return;
        }
        // A chunk of rows: each block's inputs stay in L1 while every panel streams past
        // them, instead of being read again from L2 for each panel.
        for block in blocks(m, S::F32_LANES) {
            let (b0, r) = (block.start, block.len());
            product(
                simd,
                &mut tile.rows[b0..b0 + r],
                tile.row0 + b0,
                tile.panels.clone(),
                &a[b0 * k..(b0 + r) * k],
                k,
                w.view(),
                epilogue,
            );
        }
    }
}

/// `m` rows cut into register tiles on an instruction set of `lanes` lanes: as few blocks
/// as hold [`tile_rows`] rows each, their heights differing by one at most (16 rows on
/// AVX-512: 8 + 8, not 12 + 4; 128 on AVX2: 18 blocks of 6 and 4 of 5, not 21 of 6 and one
/// of 2, whose 4 accumulators cannot keep both FMA units busy), the taller ones last.
///
/// Each block's bounds are counted on from the last, not divided out: two divisions a block
/// cost the attention's products, whose tiles run only 32 steps (one layer at 8 × 128 on a
/// Zen 3 EPYC, one thread, both forms in turn: queries times keys 1,933 → 1,816 µs).
fn blocks(m: usize, lanes: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let count = m.div_ceil(tile_rows(lanes));
    let (short, taller) = match count {
        0 => (0, 0),
        _ => (m / count, m % count),
    };
    let mut start = 0;
    (0..count).map(move |i| {
        let height = short + usize::from(i >= count - taller);
        start += height;
        start - height..start
    })
}

/// A packed matrix as the tiles read it (a [`PackedMatrix`], or one packed on the fly).
#[derive(Debug, Clone, Copy)]
pub(super) struct Panels<'a> {
    /// Columns per panel (two vectors).
    pub panel: usize,
    /// Rows.
    pub k: usize,
    /// Columns.
    pub n: usize,
    /// `[panel count][k][panel]`.
    pub data: &'a [f32],
    /// One per column, padded to whole panels.
    pub bias: &'a [f32],
    /// A [`PackedMatrix`]'s weights, which small batches stream from memory (see
    /// [`WIDE_FETCH_MIN_ROWS`]), rather than a matrix packed on the fly.
    pub streamed: bool,
}

impl Panels<'_> {
    /// Panels, the last one partial when `n` is not a whole number of them.
    pub(super) fn count(&self) -> usize {
        self.n.div_ceil(self.panel)
    }
}

impl PackedMatrix {
    fn view(&self) -> Panels<'_> {
        Panels {
            panel: self.panel,
            k: self.k,
            n: self.n,
            data: &self.panels[self.start..],
            bias: &self.bias,
            streamed: true,
        }
    }
}

/// `rows = epilogue(a · w + b)` over the columns of `panels`: `a` holds `rows.len()` rows of
/// `k` inputs, row `i` at `a[i * lda..]` (`lda ≥ k`: the rows may lie inside wider ones),
/// its first row output row `row0` (where the residual is read); each of `rows` starts at
/// the first panel's column.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn product<S: pulp::Simd>(
    simd: S,
    rows: &mut [&mut [f32]],
    row0: usize,
    panels: std::ops::Range<usize>,
    a: &[f32],
    lda: usize,
    w: Panels<'_>,
    epilogue: Epilogue<'_>,
) {
    let (k, panel) = (w.k, w.panel);
    assert!(lda >= k, "input rows shorter than k");
    assert_eq!(panel, 2 * S::F32_LANES, "panels packed for another width");
    let m = rows.len();
    let col0 = panels.start * panel;
    let count = w.count();
    // Whether each panel's first block fetches the next panel (see [`FETCH_AHEAD_LANES`]):
    // the same for every panel of the product, so decided once.
    let fetch = fetches_ahead(S::F32_LANES, m, w.streamed);
    for p in panels {
        let (packed, _) = S::as_simd_f32s(&w.data[p * k * panel..][..k * panel]);
        let (bias, _) = S::as_simd_f32s(&w.bias[p * panel..][..panel]);
        // The matrix's next panel, asked of memory while the first block of rows multiplies
        // this one, on the instruction sets where that was measured to help: with few rows
        // the weights are what a product waits for. Past the task's last panel too, into
        // the next group's first: a pool thread takes a product's tasks as rayon halves
        // their list, a contiguous run of groups in order (a thief steals a run and goes
        // through it in order too), so that is most often the panel this thread multiplies
        // next. Stopping at the task's end, each of the 8 groups of a product on two
        // threads began on a panel no tile had asked for. MiniLM-L6, one short sentence,
        // on a 2-core Xeon (family 6, model 167), both builds in turn: 645–761 → 812–835
        // sentences/s over 20 s of passes; worker / ONNX Runtime over five same-run
        // measurements each 0.84–1.15 → 1.18–1.34 (8 short sentences 1.54–1.63 →
        // 1.59–1.64; one thread, 1 and 8 short sentences +7–10 %). One group a thread (see
        // [`GROUPS_PER_THREAD`]) was as fast on a quiet host, not on a busy one.
        let next = (fetch && p + 1 < count).then(|| &w.data[(p + 1) * k * panel..][..k * panel]);
        let store = Store {
            col: p * panel - col0,
            width: panel.min(w.n - p * panel),
            n: w.n,
            gcol: p * panel,
            bias: [bias[0], bias[1]],
            epilogue,
        };
        for block in blocks(m, S::F32_LANES) {
            let (b0, r) = (block.start, block.len());
            let rows = &mut rows[b0..b0 + r];
            let inputs = Inputs {
                block: &a[b0 * lda..][..(r - 1) * lda + k],
                k,
                lda,
                packed,
                next: &[],
                row0: row0 + b0,
            };
            // Only the first block fetches ahead, and the choice is made here, once: a
            // check or a branch inside the tile's loop cost the 12-row AVX-512 tile its
            // registers (accumulators spilled every step: 1 × 128 ran at 0.6 of its speed).
            match next {
                Some(next) if b0 == 0 => {
                    block_of::<S, true>(simd, Inputs { next, ..inputs }, rows, &store)
                }
                _ => block_of::<S, false>(simd, inputs, rows, &store),
            }
        }
    }
}

/// One block of up to [`tile_rows`] rows by one panel, on the tile of its height; with
/// `FETCH`, `inputs.next` (the panel after, as long as `packed`) is prefetched meanwhile.
///
/// Only the heights an instruction set's blocks can have are compiled for it (AVX2 up to
/// 6, scalar up to 4): its tallest tile is a constant once `S` is known, the match takes
/// that arm for every taller block, and the arms after it, never reached, are never
/// generated — 22 tiles of each kind (fetching or not) rather than 36; the crate's compile
/// on a Zen 4 EPYC 17 → 11 s in release, 25 → 15 s in the test build (the tiles' code is
/// the same).
#[inline(always)]
fn block_of<S: pulp::Simd, const FETCH: bool>(
    simd: S,
    inputs: Inputs<'_, S::f32s>,
    rows: &mut [&mut [f32]],
    store: &Store<'_, S::f32s>,
) {
    let tallest = const { tile_rows(S::F32_LANES) };
    debug_assert!(rows.len() <= tallest, "block taller than a tile");
    match (tallest, rows.len()) {
        (_, 1) => tile_of::<S, 1, FETCH>(simd, inputs, rows, store),
        (_, 2) => tile_of::<S, 2, FETCH>(simd, inputs, rows, store),
        (_, 3) => tile_of::<S, 3, FETCH>(simd, inputs, rows, store),
        (4, _) | (_, 4) => tile_of::<S, 4, FETCH>(simd, inputs, rows, store),
        (_, 5) => tile_of::<S, 5, FETCH>(simd, inputs, rows, store),
        (6, _) | (_, 6) => tile_of::<S, 6, FETCH>(simd, inputs, rows, store),
        (_, 7) => tile_of::<S, 7, FETCH>(simd, inputs, rows, store),
        (_, 8) => tile_of::<S, 8, FETCH>(simd, inputs, rows, store),
        (_, 9) => tile_of::<S, 9, FETCH>(simd, inputs, rows, store),
        (_, 10) => tile_of::<S, 10, FETCH>(simd, inputs, rows, store),
        (_, 11) => tile_of::<S, 11, FETCH>(simd, inputs, rows, store),
        _ => tile_of::<S, 12, FETCH>(simd, inputs, rows, store),
    }
}

/// A tile's inputs: `block` (`R` rows of `k`, `lda` apart, its first row output row `row0`,
/// where the residual is read) times one panel (`packed`, `[k][2 vectors]`); `next`, the
/// panel to prefetch (`k` rows of a panel's width) or empty.
#[derive(Clone, Copy)]
struct Inputs<'a, V> {
    block: &'a [f32],
    k: usize,
    lda: usize,
    packed: &'a [V],
    next: &'a [f32],
    row0: usize,
}

/// Where and how one panel's accumulators are stored.
#[derive(Clone, Copy)]
struct Store<'a, V> {
    /// First column in the tile's row slices.
    col: usize,
    /// Columns of the panel inside the matrix.
    width: usize,
    /// Output width (the residual's row stride).
    n: usize,
    /// First column in the whole output.
    gcol: usize,
    bias: [V; 2],
    epilogue: Epilogue<'a>,
}

/// `R` rows times one panel (see [`Inputs`]), accumulated in registers over the whole of `k`,
/// then the epilogue and the store; with `FETCH`, one row of the next panel is prefetched a
/// step. (Blocking `k` to keep the panel in L1 was measured: no faster on these sizes. On a
/// Zen 3 EPYC, whose 512 KB L2 a feed-forward output's 1,536 inputs at 128 rows overflow,
/// stretches of 384 through every panel of the task in turn made that product 6–8 % slower,
/// best of 15 rounds in one process.)
#[inline(always)]
fn tile_of<S: pulp::Simd, const R: usize, const FETCH: bool>(
    simd: S,
    inputs: Inputs<'_, S::f32s>,
    rows: &mut [&mut [f32]],
    store: &Store<'_, S::f32s>,
) {
    let Inputs {
        block,
        k,
        lda,
        packed,
        next,
        row0,
    } = inputs;
    let (packed, _) = packed.as_chunks::<2>();
    let packed = &packed[..k];
    let panel = 2 * S::F32_LANES;
    // Each row sliced to exactly `k`, so the loop over `k` indexes them unchecked.
    let mut xs = [&block[..0]; R];
    for (r, x) in xs.iter_mut().enumerate() {
        *x = &block[r * lda..][..k];
    }
    if k == 0 {
        return;
    }
    // The next panel, whole rows of it: the loop asks for row `kk` at step `kk` by address,
    // with no check or branch inside it.
    let next = if FETCH {
        &next[..k * panel]
    } else {
        &next[..0]
    };
    let zero = simd.splat_f32s(0.0);
    let mut acc = [[zero; 2]; R];
    #[cfg(target_arch = "x86_64")]
    if S::F32_LANES == 16 && (R > SPREAD_ROWS || FETCH) && k >= ASM_MIN_K {
        // A buffer of its own, not `acc`: with `acc`'s address taken, the compiled loop
        // below (the same function, for tiles under `ASM_MIN_K` inputs) kept its
        // accumulators in memory too — the attention's queries × keys ran at half speed.
        let mut sums = [0f32; 12 * MAX_PANEL];
        // SAFETY: the only 16-lane instruction set the kernels run is `Isa::Avx512`
        // (pulp's `V4`, which holds AVX-512F); `block` holds `(R - 1) * lda + k` floats
        // (`xs` above sliced each row to `k` inside it), `packed` `k` rows of a panel, `sums`
        // twelve rows of one.
        #[allow(unsafe_code)]
        unsafe {
            tile_avx512::<R, FETCH>(
                block.as_ptr(),
                4 * lda,
                packed.as_ptr().cast(),
                k,
                next.as_ptr(),
                sums.as_mut_ptr(),
            );
        }
        for (acc, sums) in acc.iter_mut().zip(sums.chunks_exact(panel)) {
            *acc = load::<S>(sums);
        }
        return finish::<S, R>(simd, acc, rows, store, row0);
    }
    #[cfg(target_arch = "x86_64")]
    if S::F32_LANES == 8 && R <= AVX2_TILE_ROWS && !FETCH && k >= ASM_MIN_K {
        // As the AVX-512 tile's: a buffer of its own.
        let mut sums = [0f32; AVX2_TILE_ROWS * 16];
        // SAFETY: the only 8-lane instruction set the kernels run is `Isa::Avx2` (pulp's
        // `V3`, which holds AVX2 and FMA); `block` holds `(R - 1) * lda + k` floats,
        // `packed` `k` rows of a panel, `sums` six rows of one.
        #[allow(unsafe_code)]
        unsafe {
            tile_avx2::<R>(
                block.as_ptr(),
                4 * lda,
                packed.as_ptr().cast(),
                k,
                sums.as_mut_ptr(),
            );
        }
        for (acc, sums) in acc.iter_mut().zip(sums.chunks_exact(panel)) {
            *acc = load::<S>(sums);
        }
        return finish::<S, R>(simd, acc, rows, store, row0);
    }
    // The first step multiplies rather than adding to zeros: every accumulator is written
    // before it is read, so none is zero-filled in memory and loaded back.
    for (acc, x) in acc.iter_mut().zip(&xs) {
        let x = simd.splat_f32s(x[0]);
        *acc = [
            simd.mul_f32s(x, packed[0][0]),
            simd.mul_f32s(x, packed[0][1]),
        ];
    }
    if FETCH {
        fetch_row(next, 0, panel);
    }
    if R <= SPREAD_ROWS && !FETCH {
        // One register a row (see [`SPREAD_ROWS`]); resliced after the `black_box` so the
        // rows' length is known to be `k` again; the panel's rows walked in order.
        let mut xs = std::hint::black_box(xs);
        for x in &mut xs {
            *x = &x[..k];
        }
        for (kk, b) in packed.iter().enumerate().skip(1) {
            step::<S, R>(simd, &mut acc, &xs, b, kk);
        }
    } else {
        // Indexed, as before the spread tiles: the loop form the fetching and AVX-512 tiles
        // were measured in.
        #[allow(clippy::needless_range_loop)]
        for kk in 1..k {
            if FETCH {
                fetch_row(next, kk, panel);
            }
            step::<S, R>(simd, &mut acc, &xs, &packed[kk], kk);
        }
    }
    finish::<S, R>(simd, acc, rows, store, row0);
}

/// A tile's sums through the epilogue into its rows.
#[inline(always)]
fn finish<S: pulp::Simd, const R: usize>(
    simd: S,
    acc: [[S::f32s; 2]; R],
    rows: &mut [&mut [f32]],
    store: &Store<'_, S::f32s>,
    row0: usize,
) {
    for (r, (acc, row)) in acc.iter().zip(rows.iter_mut()).enumerate() {
        let dst = &mut row[store.col..store.col + store.width];
        let mut v = [
            simd.add_f32s(acc[0], store.bias[0]),
            simd.add_f32s(acc[1], store.bias[1]),
        ];
        match store.epilogue {
            Epilogue::Bias => {}
            // Not `v.map(..)`: a closure is compiled outside pulp's target-feature
            // function, and its intrinsics become calls.
            Epilogue::BiasGelu => v = [gelu_simd(simd, v[0]), gelu_simd(simd, v[1])],
            Epilogue::BiasResidual(residual) => {
                let at = (row0 + r) * store.n + store.gcol;
                let res = load::<S>(&residual[at..at + store.width]);
                v = [simd.add_f32s(v[0], res[0]), simd.add_f32s(v[1], res[1])];
            }
            Epilogue::BiasScaleRows(factors) => {
                let f = simd.splat_f32s(factors[row0 + r]);
                v = [simd.mul_f32s(v[0], f), simd.mul_f32s(v[1], f)];
            }
        }
        save::<S>(dst, v);
    }
}

/// The AVX-512 register tile's accumulation, in assembly: `R` rows (`rows`, `lda_bytes`
/// apart, `k` floats each) times one panel (`packed`, `k` rows of 32 floats), the sums
/// stored to `out` (`R` rows of 32); with `FETCH`, the next panel (`next`, as long) is
/// prefetched a row a step, as [`fetch_row`] does.
///
/// The same arithmetic as the generic tile (one FMA per input, `k` in order: the results
/// are the same bits), in a form the optimiser would not keep. Every row is addressed from
/// one of four bases (rows 0, 3, 6, 9) plus 0, 1 or 2 row strides, where the optimiser
/// derived each row's address from the one before, eleven dependent additions a step around
/// 24 FMAs (on Intel cores scalar additions share ports with the vector units); and two
/// steps a turn, halving the loop's own work. Written in Rust either way (a register a row,
/// or two steps a turn), the tile spilled its accumulators to the stack.
///
/// # Safety
///
/// The CPU has AVX-512F; `rows` holds `(R - 1) * lda_bytes / 4 + k` floats, `packed`
/// `32 * k`, `out` `32 * R`; `0 < R <= 12`, `k > 0`. `next` is only prefetched (a hint,
/// which cannot fault).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(unsafe_code)]
unsafe fn tile_avx512<const R: usize, const FETCH: bool>(
    rows: *const f32,
    lda_bytes: usize,
    packed: *const f32,
    k: usize,
    next: *const f32,
    out: *mut f32,
) {
    // One step: the panel's row at `{b}` + `$panel` bytes into two registers, then each row's
    // input at `$input` bytes past its address broadcast and multiplied into its two
    // accumulators (row r: zmm(2r), zmm(2r + 1)), assembled for rows below `R` only; the
    // broadcasts alternate between two registers.
    macro_rules! step {
        ($panel:literal, $input:literal, $b0:literal, $b1:literal, $x0:literal, $x1:literal) => {
            concat!(
                "vmovups ", $b0, ", [{b}+", $panel, "]\n",
                "vmovups ", $b1, ", [{b}+", $panel, "+64]\n",
                step!(@row "0", "{a}", $input, $x0, $b0, $b1, "zmm0", "zmm1"),
                step!(@row "1", "{a}+{l}", $input, $x1, $b0, $b1, "zmm2", "zmm3"),
                step!(@row "2", "{a}+{l}*2", $input, $x0, $b0, $b1, "zmm4", "zmm5"),
                step!(@row "3", "{a3}", $input, $x1, $b0, $b1, "zmm6", "zmm7"),
                step!(@row "4", "{a3}+{l}", $input, $x0, $b0, $b1, "zmm8", "zmm9"),
                step!(@row "5", "{a3}+{l}*2", $input, $x1, $b0, $b1, "zmm10", "zmm11"),
                step!(@row "6", "{a6}", $input, $x0, $b0, $b1, "zmm12", "zmm13"),
                step!(@row "7", "{a6}+{l}", $input, $x1, $b0, $b1, "zmm14", "zmm15"),
                step!(@row "8", "{a6}+{l}*2", $input, $x0, $b0, $b1, "zmm16", "zmm17"),
                step!(@row "9", "{a9}", $input, $x1, $b0, $b1, "zmm18", "zmm19"),
                step!(@row "10", "{a9}+{l}", $input, $x0, $b0, $b1, "zmm20", "zmm21"),
                step!(@row "11", "{a9}+{l}*2", $input, $x1, $b0, $b1, "zmm22", "zmm23"),
            )
        };
        (@row $r:literal, $at:literal, $input:literal, $x:literal, $b0:literal, $b1:literal,
         $acc0:literal, $acc1:literal) => {
            concat!(
                ".if {height} > ", $r, "\n",
                "vbroadcastss ", $x, ", [", $at, "+", $input, "]\n",
                "vfmadd231ps ", $acc0, ", ", $x, ", ", $b0, "\n",
                "vfmadd231ps ", $acc1, ", ", $x, ", ", $b1, "\n",
                ".endif\n",
            )
        };
    }
    // SAFETY: the caller's contract (above): every load is inside `rows` or `packed`, every
    // store inside `out`; the prefetches are hints.
    unsafe {
        std::arch::asm!(
            // The accumulators zeroed.
            "vpxord zmm0, zmm0, zmm0",
            ".irp acc, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23",
            "vmovaps zmm\\acc, zmm0",
            ".endr",
            // Rows 3, 6 and 9: the other bases.
            "lea {a3}, [{a}+{l}*2]", "add {a3}, {l}",
            "lea {a6}, [{a3}+{l}*2]", "add {a6}, {l}",
            "lea {a9}, [{a6}+{l}*2]", "add {a9}, {l}",
            "mov {n}, {k}", "shr {n}, 1", "jz 3f",
            // Two steps a turn: inputs kk and kk + 1, the panel's rows kk and kk + 1.
            "2:",
            step!("0", "0", "zmm24", "zmm25", "zmm26", "zmm27"),
            step!("128", "4", "zmm28", "zmm29", "zmm30", "zmm31"),
            ".if {fetch}",
            "prefetcht1 [{next}]", "prefetcht1 [{next}+64]",
            "prefetcht1 [{next}+128]", "prefetcht1 [{next}+192]",
            "add {next}, 256",
            ".endif",
            "add {a}, 8", "add {a3}, 8", "add {a6}, 8", "add {a9}, 8", "add {b}, 256",
            "dec {n}", "jnz 2b",
            // An odd k's last step.
            "3:",
            "test {k}, 1", "jz 4f",
            step!("0", "0", "zmm24", "zmm25", "zmm26", "zmm27"),
            ".if {fetch}", "prefetcht1 [{next}]", "prefetcht1 [{next}+64]", ".endif",
            // The sums out, row by row.
            "4:",
            "vmovups [{out}], zmm0", "vmovups [{out}+64], zmm1",
            ".if {height} > 1", "vmovups [{out}+128], zmm2", "vmovups [{out}+192], zmm3", ".endif",
            ".if {height} > 2", "vmovups [{out}+256], zmm4", "vmovups [{out}+320], zmm5", ".endif",
            ".if {height} > 3", "vmovups [{out}+384], zmm6", "vmovups [{out}+448], zmm7", ".endif",
            ".if {height} > 4", "vmovups [{out}+512], zmm8", "vmovups [{out}+576], zmm9", ".endif",
            ".if {height} > 5", "vmovups [{out}+640], zmm10", "vmovups [{out}+704], zmm11", ".endif",
            ".if {height} > 6", "vmovups [{out}+768], zmm12", "vmovups [{out}+832], zmm13", ".endif",
            ".if {height} > 7", "vmovups [{out}+896], zmm14", "vmovups [{out}+960], zmm15", ".endif",
            ".if {height} > 8", "vmovups [{out}+1024], zmm16", "vmovups [{out}+1088], zmm17", ".endif",
            ".if {height} > 9", "vmovups [{out}+1152], zmm18", "vmovups [{out}+1216], zmm19", ".endif",
            ".if {height} > 10", "vmovups [{out}+1280], zmm20", "vmovups [{out}+1344], zmm21", ".endif",
            ".if {height} > 11", "vmovups [{out}+1408], zmm22", "vmovups [{out}+1472], zmm23", ".endif",
            height = const R,
            fetch = const FETCH as usize,
            a = inout(reg) rows => _,
            a3 = out(reg) _,
            a6 = out(reg) _,
            a9 = out(reg) _,
            l = in(reg) lda_bytes,
            b = inout(reg) packed => _,
            next = inout(reg) next => _,
            k = in(reg) k,
            n = out(reg) _,
            out = in(reg) out,
            out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _,
            out("zmm4") _, out("zmm5") _, out("zmm6") _, out("zmm7") _,
            out("zmm8") _, out("zmm9") _, out("zmm10") _, out("zmm11") _,
            out("zmm12") _, out("zmm13") _, out("zmm14") _, out("zmm15") _,
            out("zmm16") _, out("zmm17") _, out("zmm18") _, out("zmm19") _,
            out("zmm20") _, out("zmm21") _, out("zmm22") _, out("zmm23") _,
            out("zmm24") _, out("zmm25") _, out("zmm26") _, out("zmm27") _,
            out("zmm28") _, out("zmm29") _, out("zmm30") _, out("zmm31") _,
            options(nostack),
        );
    }
}

/// The tallest AVX2 tile ([`tile_rows`] for 8 lanes), which [`tile_avx2`] covers.
#[cfg(target_arch = "x86_64")]
const AVX2_TILE_ROWS: usize = tile_rows(8);

/// The AVX2 register tile's accumulation, in assembly, for the tiles that do not fetch the
/// next panel (every block of a panel after its first): `R` rows (`rows`, `lda_bytes`
/// apart, `k` floats each) times one panel (`packed`, `k` rows of 16 floats), the sums
/// stored to `out` (`R` rows of 16).
///
/// The same arithmetic as the generic tile (the results are the same bits), as
/// [`tile_avx512`] does it: the rows addressed from two bases (rows 0 and 3) plus 0, 1 or
/// 2 row strides, two steps a turn — 45 instructions a turn around its 24 FMAs, where the
/// compiled spread tile ([`SPREAD_ROWS`]) takes 26 a step. The AVX2 path on a 2-core Xeon (family
/// 6, model 167), MiniLM-L6 against ONNX Runtime's AVX2 kernels in the same run (`make
/// bench-worker ISA=avx2`'s cells), four runs each way in turn: 8 × 128 1.04–1.06 →
/// 1.09–1.11 of ONNX Runtime, 32 × 128 1.10–1.13 → 1.15–1.18, 1 × 128 level (1.09–1.11,
/// 1.08–1.12); `make bench-kernels`' products at 1,024 rows +2–4 %, 128 rows level. The
/// fetching tiles (each panel's first block) stay compiled: in assembly with both
/// prefetches at the end of a turn, the 6-row products (every tile fetching) ran 4–11 %
/// slower; with one a step, after the panel's loads, the products of 6 to 24 rows ran 2–5 %
/// faster but the passes of short batches did not move (three runs each way).
///
/// # Safety
///
/// The CPU has AVX2 and FMA; `rows` holds `(R - 1) * lda_bytes / 4 + k` floats, `packed`
/// `16 * k`, `out` `16 * R`; `0 < R <= 6`, `k > 0`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(unsafe_code)]
unsafe fn tile_avx2<const R: usize>(
    rows: *const f32,
    lda_bytes: usize,
    packed: *const f32,
    k: usize,
    out: *mut f32,
) {
    // One step: the panel's row at `{b}` + `$panel` bytes into ymm12 and ymm13, then each
    // row's input at `$input` bytes past its address broadcast (into ymm14 and ymm15 in
    // turn) and multiplied into its two accumulators (row r: ymm(2r), ymm(2r + 1)).
    macro_rules! step {
        ($panel:literal, $input:literal) => {
            concat!(
                "vmovups ymm12, [{b}+", $panel, "]\n",
                "vmovups ymm13, [{b}+", $panel, "+32]\n",
                step!(@row "0", "{a}", $input, "ymm14", "ymm0", "ymm1"),
                step!(@row "1", "{a}+{l}", $input, "ymm15", "ymm2", "ymm3"),
                step!(@row "2", "{a}+{l}*2", $input, "ymm14", "ymm4", "ymm5"),
                step!(@row "3", "{a3}", $input, "ymm15", "ymm6", "ymm7"),
                step!(@row "4", "{a3}+{l}", $input, "ymm14", "ymm8", "ymm9"),
                step!(@row "5", "{a3}+{l}*2", $input, "ymm15", "ymm10", "ymm11"),
            )
        };
        (@row $r:literal, $at:literal, $input:literal, $x:literal, $acc0:literal, $acc1:literal) => {
            concat!(
                ".if {height} > ", $r, "\n",
                "vbroadcastss ", $x, ", [", $at, "+", $input, "]\n",
                "vfmadd231ps ", $acc0, ", ", $x, ", ymm12\n",
                "vfmadd231ps ", $acc1, ", ", $x, ", ymm13\n",
                ".endif\n",
            )
        };
    }
    // SAFETY: the caller's contract (above).
    unsafe {
        std::arch::asm!(
            ".irp acc, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11",
            "vxorps ymm\\acc, ymm\\acc, ymm\\acc",
            ".endr",
            "lea {a3}, [{a}+{l}*2]", "add {a3}, {l}",
            "mov {n}, {k}", "shr {n}, 1", "jz 3f",
            "2:",
            step!("0", "0"),
            step!("64", "4"),
            "add {a}, 8", "add {a3}, 8", "add {b}, 128",
            "dec {n}", "jnz 2b",
            "3:",
            "test {k}, 1", "jz 4f",
            step!("0", "0"),
            "4:",
            "vmovups [{out}], ymm0", "vmovups [{out}+32], ymm1",
            ".if {height} > 1", "vmovups [{out}+64], ymm2", "vmovups [{out}+96], ymm3", ".endif",
            ".if {height} > 2", "vmovups [{out}+128], ymm4", "vmovups [{out}+160], ymm5", ".endif",
            ".if {height} > 3", "vmovups [{out}+192], ymm6", "vmovups [{out}+224], ymm7", ".endif",
            ".if {height} > 4", "vmovups [{out}+256], ymm8", "vmovups [{out}+288], ymm9", ".endif",
            ".if {height} > 5", "vmovups [{out}+320], ymm10", "vmovups [{out}+352], ymm11", ".endif",
            height = const R,
            a = inout(reg) rows => _,
            a3 = out(reg) _,
            l = in(reg) lda_bytes,
            b = inout(reg) packed => _,
            k = in(reg) k,
            n = out(reg) _,
            out = in(reg) out,
            out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
            out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
            out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
            out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
            options(nostack),
        );
    }
}

/// Inputs (`k`) from which an AVX-512 tile runs [`tile_avx512`] (and a non-fetching AVX2
/// tile [`tile_avx2`], not measured apart below it): its sums pass through
/// memory to the epilogue (24 vector stores and loads a tile), which a short tile does not
/// repay. One layer's attention on a 2-core Xeon (family 6, model 167), three rounds each
/// way in turn: with every tile in assembly the queries-times-keys products (32 inputs,
/// one head's width) made 8 × 128 1,302–1,342 → 1,346–1,391 µs and 32 × 12 351–367 →
/// 375–405; from 64 inputs, 1,305–1,321 and 342–368 (the weights-times-scores products of
/// 128-token sequences in assembly, the rest as before).
#[cfg(target_arch = "x86_64")]
const ASM_MIN_K: usize = 64;

/// One step of a tile: row `kk` of the panel, `b`, times input `kk` of each row.
#[inline(always)]
fn step<S: pulp::Simd, const R: usize>(
    simd: S,
    acc: &mut [[S::f32s; 2]; R],
    xs: &[&[f32]; R],
    b: &[S::f32s; 2],
    kk: usize,
) {
    for (acc, x) in acc.iter_mut().zip(xs) {
        let x = simd.splat_f32s(x[kk]);
        acc[0] = simd.mul_add_f32s(x, b[0], acc[0]);
        acc[1] = simd.mul_add_f32s(x, b[1], acc[1]);
    }
}

/// Two vectors from `src` (one panel's columns; a partial panel's missing ones are zero).
#[inline(always)]
pub(super) fn load<S: pulp::Simd>(src: &[f32]) -> [S::f32s; 2] {
    let lanes = S::F32_LANES;
    let mut buf = [0f32; MAX_PANEL];
    let src = if src.len() == 2 * lanes {
        src
    } else {
        buf[..src.len()].copy_from_slice(src);
        &buf[..2 * lanes]
    };
    let (v, _) = S::as_simd_f32s(src);
    [v[0], v[1]]
}

/// Two vectors into `dst` (one panel's columns; a partial panel stores only those).
#[inline(always)]
pub(super) fn save<S: pulp::Simd>(dst: &mut [f32], v: [S::f32s; 2]) {
    let lanes = S::F32_LANES;
    if dst.len() == 2 * lanes {
        let (dst, _) = S::as_mut_simd_f32s(dst);
        dst.copy_from_slice(&v);
    } else {
        let mut buf = [0f32; MAX_PANEL];
        let (whole, _) = S::as_mut_simd_f32s(&mut buf[..2 * lanes]);
        whole.copy_from_slice(&v);
        let width = dst.len();
        dst.copy_from_slice(&buf[..width]);
    }
}

/// Row `kk` of `panel_rows` (rows of `panel` floats, at least `kk + 1` of them) asked of
/// memory: one 64-byte line on AVX2, two on AVX-512. The addresses are computed, not
/// indexed: a bounds check here, inside the tile's loop, cost the AVX-512 tile its registers.
#[inline(always)]
fn fetch_row(panel_rows: &[f32], kk: usize, panel: usize) {
    let row = panel_rows.as_ptr().wrapping_add(kk * panel);
    for line in 0..panel / CACHE_LINE_FLOATS {
        prefetch(row.wrapping_add(line * CACHE_LINE_FLOATS));
    }
}

/// Floats per cache line (64 bytes).
const CACHE_LINE_FLOATS: usize = 16;

/// Asks for the cache line holding `at` to be brought into L2, without waiting for it.
#[inline(always)]
fn prefetch(at: *const f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it reads nothing into the program, cannot fault whatever
    // the address, and has no effect but on the cache (the callers' addresses are inside
    // the panel being fetched).
    #[allow(unsafe_code)]
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(at.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}
