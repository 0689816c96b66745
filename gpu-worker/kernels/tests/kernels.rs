//! Every kernel on every instruction set this CPU has (scalar, AVX2, AVX-512 on the
//! machines this project is built on), each held to the plain reference.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use inferencehub_kernels::*;

/// The vector forms of [`exp`] and [`gelu`] over `xs`, on one instruction set (tests).
struct VectorMath(Vec<f32>);

impl pulp::WithSimd for VectorMath {
    type Output = (Vec<f32>, Vec<f32>);
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) -> Self::Output {
        let mut g = self.0.clone();
        let mut e = self.0;
        let (head, tail) = S::as_mut_simd_f32s(&mut g);
        head.iter_mut().for_each(|v| *v = gelu_simd(simd, *v));
        tail.iter_mut().for_each(|v| *v = gelu(*v));
        let (head, tail) = S::as_mut_simd_f32s(&mut e);
        head.iter_mut().for_each(|v| *v = exp_simd(simd, *v));
        tail.iter_mut().for_each(|v| *v = exp(*v));
        (g, e)
    }
}

use inferencehub_kernels::reference::test_values as values;

/// [`exp2_nonpositive_simd`] over `ts`, on one instruction set; the tail that is not a whole
/// vector by the scalar [`exp2_nonpositive`].
struct VectorExp2(Vec<f32>);

impl pulp::WithSimd for VectorExp2 {
    type Output = Vec<f32>;
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) -> Self::Output {
        let mut e = self.0;
        let (head, tail) = S::as_mut_simd_f32s(&mut e);
        head.iter_mut()
            .for_each(|v| *v = exp2_nonpositive_simd(simd, *v));
        tail.iter_mut().for_each(|v| *v = exp2_nonpositive(*v));
        e
    }
}

fn norm(h: usize) -> Norm {
    Norm {
        gamma: values(h, 7, 1.5),
        beta: values(h, 8, 0.5),
        eps: 1e-12,
    }
}

/// The largest error of `a` against `b`, relative where `|b| > 1`; infinite where a value is
/// NaN (`f32::max` would skip it, and an output left unwritten — the tests fill them with
/// NaN — would pass).
fn worst(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
        .map(|e| if e.is_nan() { f32::INFINITY } else { e })
        .fold(0.0, f32::max)
}

#[test]
fn every_instruction_set_this_cpu_has_is_tested() {
    let names: Vec<&str> = Isa::all().into_iter().map(Isa::name).collect();
    eprintln!("kernels run here on: {names:?}");
    assert_eq!(names[0], "scalar");
    assert_eq!(Isa::best().name(), *names.last().unwrap());
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        assert_eq!(names, ["scalar", "avx2", "avx512"]);
    }
}

#[test]
fn exp_erf_and_gelu_match_the_reference() {
    for i in -2000..=2000 {
        let x = i as f32 / 50.0;
        let want = f64::from(x).exp();
        let got = f64::from(exp(x));
        assert!(
            ((got - want) / want).abs() < 1e-6,
            "exp({x}) = {got}, want {want}"
        );
    }
    for i in -600..=600 {
        let x = i as f32 / 100.0;
        let want = reference::erf(f64::from(x));
        assert!((f64::from(erf(x)) - want).abs() < 1e-6, "erf({x})");
    }
    assert!(exp(-200.0) < 1e-37);
    // erf saturates to exactly ±1, so GELU of a large negative input is exactly 0 (not
    // a rounding error times the input) and of a large positive one the input itself.
    for x in [4.0f32, 4.5, 30.0, 1e30] {
        assert_eq!((erf(x), erf(-x)), (1.0, -1.0), "erf(±{x})");
    }
    // 37 values: whole vectors and a scalar tail on every instruction set.
    let far: Vec<f32> = [-6.0f32, -40.0, -1e4, -1e30, 6.0, 40.0, 1e4, 1e30]
        .into_iter()
        .cycle()
        .take(37)
        .collect();
    for isa in Isa::all() {
        let (g, _) = isa.run(VectorMath(far.clone()));
        for (x, g) in far.iter().zip(g) {
            let want = if *x < 0.0 { 0.0 } else { *x };
            assert_eq!(g, want, "{} gelu({x})", isa.name());
        }
    }
    let xs = values(4099, 1, 8.0);
    for isa in Isa::all() {
        let (g, e) = isa.run(VectorMath(xs.clone()));
        for ((x, g), e) in xs.iter().zip(g).zip(e) {
            let want = reference::gelu(f64::from(*x)) as f32;
            assert!(
                (g - want).abs() <= 2e-6 * x.abs().max(1.0),
                "{} gelu({x})",
                isa.name()
            );
            assert!(
                (e - exp(*x)).abs() <= 1e-6 * exp(*x),
                "{} exp({x})",
                isa.name()
            );
        }
    }
}

#[test]
fn the_softmax_exponent_matches_the_reference() {
    // 0 down to -130 in steps of 1/64 (the rounding's halfway points among them), -∞, and a
    // length that leaves a scalar tail on every instruction set.
    let mut ts: Vec<f32> = (0..=130 * 64).map(|i| -(i as f32) / 64.0).collect();
    ts.extend([f32::NEG_INFINITY, -1e30, -0.0]);
    let mut worst_error = 0f64;
    for isa in Isa::all() {
        let got = isa.run(VectorExp2(ts.clone()));
        for (&t, e) in ts
            .iter()
            .zip(got)
            .chain(ts.iter().map(|t| (t, exp2_nonpositive(*t))))
        {
            // Below -126, 2^-126 (the smallest normal f32): 0 for a softmax's purposes.
            let want = f64::from(t.max(-126.0)).exp2();
            let error = (f64::from(e) - want).abs() / want;
            worst_error = worst_error.max(error);
            assert!(error < 3e-7, "{}: 2^{t} = {e:e}, want {want:e}", isa.name());
        }
    }
    eprintln!("exp2_nonpositive: worst relative error {worst_error:e}");
}

#[test]
fn embeddings_match_the_reference() {
    let (h, vocab, positions) = (40, 50, 20);
    let word = values(vocab * h, 2, 1.0);
    let position = values(positions * h, 3, 1.0);
    let type0 = values(h, 4, 0.2);
    let norm = norm(h);
    let rows: Vec<(u32, usize)> = (0..37)
        .map(|i| ((i * 7 % vocab) as u32, i % positions))
        .collect();
    let want = reference::embed(&rows, &word, &position, &type0, &norm);
    for isa in Isa::all() {
        let mut out = vec![0f32; rows.len() * h];
        embed(isa, &mut out, &rows, &word, &position, &type0, &norm);
        assert!(
            worst(&out, &want) < 1e-5,
            "{}: {}",
            isa.name(),
            worst(&out, &want)
        );
    }
}

#[test]
fn every_tile_height_matches_the_reference() {
    // Rows 1 to 26: one block of every height each instruction set compiles (up to 12 rows
    // on AVX-512, 6 on AVX2, 4 scalar), then blocks of mixed heights; a whole panel and a
    // part one, the first fetching the next panel; inner sizes below and above the one
    // from which the x86 tiles run in assembly, both odd (the assembly takes two steps a
    // turn). An output a tile leaves unwritten stays NaN and fails.
    let n = 40;
    for k in [19, 67] {
        let w = values(k * n, 21, 0.3);
        let bias = values(n, 22, 0.5);
        for isa in Isa::all() {
            let packed = PackedMatrix::new(isa, &w, k, n, &bias);
            for rows in 1..=26 {
                let a = values(rows * k, 20, 1.0);
                let want: Vec<f32> = reference::dense(&a, &w, k, &bias)
                    .iter()
                    .map(|&v| v as f32)
                    .collect();
                let mut out = vec![f32::NAN; rows * n];
                matmul(isa, &mut out, &a, &packed, Epilogue::Bias);
                let w = worst(&out, &want);
                assert!(w < 1e-5, "{} {rows} rows, k {k}: {w}", isa.name());
            }
        }
    }
}

#[test]
fn dense_layers_and_their_epilogues_match_the_reference() {
    // Rows below, at and above a register tile and past the panel split; output widths that
    // are and are not whole panels, in as many panels as the threads' groups or more (1,150
    // columns: 36 AVX-512 panels over 8 groups of 4 or 5); inner sizes of one and of many
    // vectors.
    for (rows, k, n) in [
        (1, 16, 32),
        (5, 37, 21),
        (7, 24, 1150),
        (13, 64, 100),
        (29, 384, 96),
        (300, 40, 70),
    ] {
        let a = values(rows * k, 12, 1.0);
        let w = values(k * n, 13, 0.3);
        let bias = values(n, 14, 0.5);
        let residual = values(rows * n, 15, 2.0);
        let plain = reference::dense(&a, &w, k, &bias);
        let want_bias: Vec<f32> = plain.iter().map(|&v| v as f32).collect();
        let want_gelu: Vec<f32> = plain.iter().map(|&v| reference::gelu(v) as f32).collect();
        let want_residual: Vec<f32> = plain
            .iter()
            .zip(&residual)
            .map(|(&v, &r)| (v + f64::from(r)) as f32)
            .collect();
        let factors = values(rows, 16, 3.0);
        let want_scaled: Vec<f32> = plain
            .chunks_exact(n)
            .zip(&factors)
            .flat_map(|(row, &f)| row.iter().map(move |&v| (v * f64::from(f)) as f32))
            .collect();
        for isa in Isa::all() {
            let packed = PackedMatrix::new(isa, &w, k, n, &bias);
            assert_eq!((packed.inputs(), packed.outputs()), (k, n));
            let mut out = vec![f32::NAN; rows * n];
            let cases = [
                ("bias", Epilogue::Bias, &want_bias),
                ("gelu", Epilogue::BiasGelu, &want_gelu),
                (
                    "residual",
                    Epilogue::BiasResidual(&residual),
                    &want_residual,
                ),
                ("scaled", Epilogue::BiasScaleRows(&factors), &want_scaled),
            ];
            for (name, epilogue, want) in cases {
                out.fill(f32::NAN);
                matmul(isa, &mut out, &a, &packed, epilogue);
                let w = worst(&out, want);
                assert!(w < 1e-5, "{} {name} {rows}x{k}x{n}: {w}", isa.name());
            }
        }
    }
}

#[test]
fn layer_norm_matches_the_reference() {
    for (rows, h) in [(3, 16), (21, 37), (70, 384)] {
        let x = values(rows * h, 5, 4.0);
        let norm = norm(h);
        let want: Vec<f32> = x
            .chunks_exact(h)
            .flat_map(|row| {
                let row: Vec<f64> = row.iter().map(|&v| f64::from(v)).collect();
                reference::layer_norm(&row, &norm)
            })
            .collect();
        for isa in Isa::all() {
            let mut out = x.clone();
            layer_norm_rows(isa, &mut out, &norm);
            assert!(
                worst(&out, &want) < 1e-5,
                "{} rows={rows} h={h}",
                isa.name()
            );
        }
    }
}

#[test]
fn weights_packed_for_one_instruction_set_are_refused_by_another() {
    let all = Isa::all();
    let (Some(narrow), Some(wide)) = (all.first(), all.last()) else {
        return;
    };
    if narrow.lanes() == wide.lanes() {
        return;
    }
    let packed = PackedMatrix::new(*narrow, &[1.0; 4], 2, 2, &[0.0; 2]);
    let caught = std::panic::catch_unwind(|| {
        let mut out = [0f32; 2];
        matmul(*wide, &mut out, &[1.0, 1.0], &packed, Epilogue::Bias);
    });
    assert!(caught.is_err());
}

#[test]
fn attention_matches_the_reference() {
    // Sequences of 1, 5, 17 and 64 tokens; head sizes that are and are not whole vectors.
    for (hidden, heads) in [(64, 4), (48, 4), (96, 3)] {
        let offsets = [0, 1, 6, 23, 87];
        let tokens = offsets[offsets.len() - 1];
        let qkv = values(tokens * 3 * hidden, 10, 2.0);
        let want = reference::attention(&qkv, &offsets, heads);
        for isa in Isa::all() {
            let mut got = vec![f32::NAN; tokens * hidden];
            attention(isa, &mut got, &qkv, &offsets, heads);
            let w = worst(&got, &want);
            assert!(
                w < 1e-5,
                "{} hidden={hidden} heads={heads}: {w}",
                isa.name()
            );
        }
    }
}

/// A pool of `threads` threads, for the tests of [`pass`].
fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}

/// Runs `f` on a thread of its own and waits at most 20 s for it: a pass whose pollers
/// never stop would hang the test instead of failing it.
fn within_20s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(20))
        .expect("the pass did not return: its pollers never stopped")
}

#[test]
fn a_pass_runs_its_parallel_steps_on_the_pool_and_returns_its_value() {
    use rayon::prelude::*;
    let sums = within_20s(|| {
        pool(3).install(|| {
            (0..3)
                .map(|round| {
                    pass(|| {
                        // Several steps, as a forward pass has, and one nested pass.
                        let a: u64 = (0..10_000u64).into_par_iter().map(|i| i * round).sum();
                        let b: u64 = pass(|| (0..1_000u64).into_par_iter().sum());
                        let threads = rayon::current_num_threads();
                        (a, b, threads)
                    })
                })
                .collect::<Vec<_>>()
        })
    });
    for (round, (a, b, threads)) in sums.into_iter().enumerate() {
        assert_eq!(a, 49_995_000 * round as u64);
        assert_eq!(b, 499_500);
        assert_eq!(threads, 3, "the pass ran off its pool");
    }
    // On one thread there is no one to poll: it simply runs.
    assert_eq!(within_20s(|| pool(1).install(|| pass(|| 7))), 7);
}

#[test]
fn a_pass_that_panics_ends_its_pollers_and_the_panic_reaches_the_caller() {
    let (caught, after) = within_20s(|| {
        let pool = pool(2);
        let caught = pool.install(|| {
            std::panic::catch_unwind(|| pass(|| -> u32 { panic!("a kernel failed") }))
                .map_err(|e| e.downcast_ref::<&str>().map(|s| s.to_string()))
        });
        // The same pool serves the next pass.
        (caught, pool.install(|| pass(|| 1 + 1)))
    });
    assert_eq!(caught, Err(Some("a kernel failed".to_string())));
    assert_eq!(after, 2);
}

/// CPU time this thread has used, in clock ticks (Linux: `/proc/thread-self/stat`, user
/// plus system).
#[cfg(target_os = "linux")]
fn thread_cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    // utime and stime: fields 14 and 15 of the line, 12 and 13 after the name.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[cfg(target_os = "linux")]
#[test]
fn pollers_leave_a_pass_that_has_no_parallel_work_for_a_long_stretch() {
    // A pass that spends 600 ms in serial work (here, asleep): its poller finds nothing to
    // run and leaves after a millisecond instead of polling (and burning a core) for all of
    // it. Polling throughout cost the other thread 15 ticks of CPU (10 ms each) over 400 ms
    // on a machine busy with other work, ≈ 40 on an idle one.
    let pool = pool(2);
    let ticks = |pool: &rayon::ThreadPool| pool.broadcast(|_| thread_cpu_ticks());
    let before = ticks(&pool);
    let out = pool.install(|| {
        pass(|| {
            std::thread::sleep(std::time::Duration::from_millis(600));
            5
        })
    });
    let after = ticks(&pool);
    assert_eq!(out, 5);
    let used: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert!(
        used.iter().all(|&t| t <= 5),
        "a pool thread kept polling through the serial stretch: {used:?} ticks"
    );
}

#[test]
fn passes_from_two_callers_take_turns_and_none_waits_through_several_of_the_other() {
    use std::sync::{Arc, Mutex};
    // Two threads outside the pool (as two models' threads are), each running passes of
    // parallel steps on the global pool in a loop. Every pass notes when it was asked for
    // and when it started. Taking turns, while one caller waits the other starts one pass,
    // or two if it asked again before this caller took its ticket; the bound of four leaves
    // room for a caller preempted between noting its ask and taking the ticket. Left to
    // rayon, one caller's pass waited through 18-29 of the other's (five runs).
    #[derive(Clone, Copy, PartialEq)]
    enum Event {
        Asked(usize),
        Started(usize),
        Returned(usize),
    }
    let isa = Isa::best();
    // An encoder's products (MiniLM-L6's shapes, six layers), on 12 rows.
    let products: Arc<Vec<PackedMatrix>> = Arc::new(
        (0..6)
            .flat_map(|l| {
                [(384, 1152), (384, 384), (384, 1536), (1536, 384)].map(|(k, n)| {
                    PackedMatrix::new(isa, &values(k * n, l, 0.1), k, n, &vec![0.0; n])
                })
            })
            .collect(),
    );
    let within = within_20s(move || {
        let log = Arc::new(Mutex::new(Vec::new()));
        let callers: Vec<_> = (0..2)
            .map(|caller| {
                let (log, products) = (log.clone(), products.clone());
                std::thread::spawn(move || {
                    let x = vec![0.5; 12 * 1536];
                    let mut out = vec![0.0; 12 * 1536];
                    for _ in 0..30 {
                        log.lock().unwrap().push(Event::Asked(caller));
                        pass(|| {
                            log.lock().unwrap().push(Event::Started(caller));
                            for w in products.iter() {
                                let out = &mut out[..12 * w.outputs()];
                                matmul(isa, out, &x[..12 * w.inputs()], w, Epilogue::Bias);
                            }
                        });
                        log.lock().unwrap().push(Event::Returned(caller));
                    }
                })
            })
            .collect();
        for caller in callers {
            caller.join().unwrap();
        }
        log.lock().unwrap().clone()
    });
    let mut worst = 0;
    for (at, event) in within.iter().enumerate() {
        let Event::Asked(caller) = *event else {
            continue;
        };
        let returned = within[at..]
            .iter()
            .position(|e| *e == Event::Returned(caller))
            .expect("a pass asked for never returned");
        let overtaken = within[at..at + returned]
            .iter()
            .filter(|e| matches!(e, Event::Started(other) if *other != caller))
            .count();
        worst = worst.max(overtaken);
    }
    assert!(
        worst <= 4,
        "a caller waited through {worst} passes of the other"
    );
}

#[test]
fn the_pool_is_pinned_only_when_it_has_one_thread_per_cpu() {
    let two = [0, 1];
    let eight: Vec<usize> = (0..8).collect();
    // auto: one thread per CPU the process may run on, and more than one.
    assert_eq!(pool_cpus(2, &two, Pinning::Auto), vec![0, 1]);
    assert_eq!(pool_cpus(3, &[2, 5, 7], Pinning::Auto), vec![2, 5, 7]);
    assert!(
        pool_cpus(2, &eight, Pinning::Auto).is_empty(),
        "a quota below the CPUs"
    );
    assert!(
        pool_cpus(3, &two, Pinning::Auto).is_empty(),
        "more threads than CPUs"
    );
    assert!(pool_cpus(1, &[4], Pinning::Auto).is_empty(), "one thread");
    // on: round the CPUs; off: never; no CPU set read: never.
    assert_eq!(pool_cpus(3, &two, Pinning::On), vec![0, 1, 0]);
    assert_eq!(pool_cpus(2, &eight, Pinning::On), vec![0, 1]);
    assert!(pool_cpus(2, &two, Pinning::Off).is_empty());
    assert!(pool_cpus(2, &[], Pinning::On).is_empty());
}

#[cfg(target_os = "linux")]
#[test]
fn a_pinned_thread_runs_on_its_cpu_only() {
    let allowed = allowed_cpus();
    assert!(!allowed.is_empty(), "the affinity mask could not be read");
    let last = *allowed.last().unwrap();
    let (pinned, now, status) = std::thread::spawn(move || {
        let pinned = pin_current_thread(last);
        // Read back both ways: the system call and what /proc shows of the thread.
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        (pinned, allowed_cpus(), status)
    })
    .join()
    .unwrap();
    assert!(pinned);
    assert_eq!(now, vec![last]);
    assert!(
        status.contains(&format!("Cpus_allowed_list:\t{last}\n")),
        "{status}"
    );
    // The spawning thread's own mask is untouched, and a CPU past the set is refused.
    assert_eq!(allowed_cpus(), allowed);
    assert!(!pin_current_thread(1 << 20));
}

#[test]
fn cpuid_signatures_name_the_cpu_and_only_zen4_skips_the_wide_fetch() {
    use inferencehub_kernels::{Cpu, Vendor};
    const AMD: [u32; 3] = [0x6874_7541, 0x6974_6e65, 0x444d_4163];
    const INTEL: [u32; 3] = [0x756e_6547, 0x4965_6e69, 0x6c65_746e];
    // Leaf 1's EAX: stepping, model, base family, extended model, extended family.
    let cases = [
        (AMD, 0x00A1_0F11, Vendor::Amd, 0x19, false), // Zen 4 EPYC (family 19h, model 11h)
        (AMD, 0x00A6_0F12, Vendor::Amd, 0x19, false), // Zen 4 desktop (model 61h)
        (AMD, 0x00B0_0F21, Vendor::Amd, 0x1A, true),  // Zen 5 EPYC (family 1Ah, model 02h)
        (AMD, 0x0083_0F10, Vendor::Amd, 0x17, true),  // Zen 2 (family 17h)
        (INTEL, 0x000C_06F2, Vendor::Intel, 6, true), // Emerald Rapids (family 6)
        (INTEL, 0x00A1_0F11, Vendor::Intel, 0x19, true), // family 19h, not AMD's
        ([0; 3], 0x00A1_0F11, Vendor::Other, 0x19, true),
    ];
    for (vendor, version, maker, family, fetches) in cases {
        let cpu = Cpu::from_cpuid(vendor, version);
        assert_eq!((cpu.vendor, cpu.family), (maker, family), "{version:#x}");
        assert_eq!(cpu.wide_fetch_pays(), fetches, "{cpu:?}");
    }
    // This machine's own CPUID, decoded, agrees with the kernel's reading of it.
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    {
        let info = std::fs::read_to_string("/proc/cpuinfo").unwrap();
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.split_once(':').filter(|(k, _)| k.trim() == name))
                .map(|(_, v)| v.trim().to_string())
                .unwrap()
        };
        let this = Cpu::this();
        assert_eq!(this.family.to_string(), field("cpu family"));
        let vendor = match field("vendor_id").as_str() {
            "GenuineIntel" => Vendor::Intel,
            "AuthenticAMD" => Vendor::Amd,
            _ => Vendor::Other,
        };
        assert_eq!(this.vendor, vendor);
    }
}
