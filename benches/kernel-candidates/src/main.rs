//! GFLOP/s of candidate f32 matrix kernels on the transformer's shapes.
use std::time::Instant;

fn fill(n: usize, s: u32) -> Vec<f32> {
    (0..n).map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(s)) % 1000) as f32 / 1000.0 - 0.5).collect()
}

fn time(flops: f64, mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let mut reps = 0;
        while t.elapsed().as_secs_f64() < 0.15 {
            f();
            reps += 1;
        }
        best = best.min(t.elapsed().as_secs_f64() / reps as f64);
    }
    flops / best / 1e9
}

fn main() {
    let threads: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(2);
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().unwrap();
    faer::set_global_parallelism(if threads > 1 { faer::Par::rayon(threads) } else { faer::Par::Seq });
    // (m, k, n, transpose a): y = x·W forward shapes, dW = xᵀ·dy backward shapes, attention.
    let shapes = [
        (2048, 384, 1152, false),
        (2048, 384, 1536, false),
        (2048, 1536, 384, false),
        (2048, 256, 768, false),
        (2048, 256, 1024, false),
        (2048, 128, 512, false),
        (384, 2048, 1152, true),
        (256, 2048, 1024, true),
        (256, 64, 256, false),
        (256, 256, 40, false),
        (32, 32, 32, false),
    ];
    println!("threads {threads}");
    println!("{:>5} {:>5} {:>5} {:>2} {:>9} {:>9} {:>9} {:>9}", "m", "k", "n", "t", "gemm0.15", "gemm0.19", "faer", "openblas");
    for &(m, k, n, ta) in &shapes {
        let a = fill(m * k, 1);
        let b = fill(k * n, 2);
        let mut c = vec![0f32; m * n];
        let flops = 2.0 * (m * k * n) as f64;
        let small = m * k * n < 1 << 15;
        let par15 = if threads > 1 && !small { gemm15::Parallelism::Rayon(threads) } else { gemm15::Parallelism::None };
        let par19 = if threads > 1 && !small { gemm19::Parallelism::Rayon(threads) } else { gemm19::Parallelism::None };
        // a is stored k × m when transposed (read as its transpose).
        let (ars, acs) = if ta { (1isize, m as isize) } else { (k as isize, 1) };
        let g15 = time(flops, || unsafe {
            gemm15::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                acs,
                ars,
                b.as_ptr(),
                1,
                n as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                par15,
            )
        });
        let g19 = time(flops, || unsafe {
            gemm19::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                acs,
                ars,
                b.as_ptr(),
                1,
                n as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                par19,
            )
        });
        let fa = {
            let par = if threads > 1 && !small { faer::Par::rayon(threads) } else { faer::Par::Seq };
            time(flops, || {
                let am = if ta {
                    faer::MatRef::from_row_major_slice(&a, k, m).transpose()
                } else {
                    faer::MatRef::from_row_major_slice(&a, m, k)
                };
                let bm = faer::MatRef::from_row_major_slice(&b, k, n);
                let cm = faer::MatMut::from_row_major_slice_mut(&mut c, m, n);
                faer::linalg::matmul::matmul(cm, faer::Accum::Replace, am, bm, 1.0f32, par);
            })
        };
        let ob = time(flops, || unsafe {
            cblas_sys::cblas_sgemm(
                cblas_sys::CblasRowMajor,
                if ta { cblas_sys::CblasTrans } else { cblas_sys::CblasNoTrans },
                cblas_sys::CblasNoTrans,
                m as i32,
                n as i32,
                k as i32,
                1.0,
                a.as_ptr(),
                if ta { m as i32 } else { k as i32 },
                b.as_ptr(),
                n as i32,
                0.0,
                c.as_mut_ptr(),
                n as i32,
            )
        });
        println!("{m:>5} {k:>5} {n:>5} {:>2} {g15:>9.1} {g19:>9.1} {fa:>9.1} {ob:>9.1}", if ta { "T" } else { "" });
    }
}
