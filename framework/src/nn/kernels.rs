//! Kernels for the hand-differentiated transformer and the n-gram MLP: matrix products on `gemm` (the
//! kernel dfdx itself uses), row-wise layer norm, GELU and softmax, each with its backward.
//!
//! Why not dfdx's autodiff here: a transformer step is a few dozen matrix products; dfdx
//! allocates and copies around each of them (broadcasts, permutes for heads), which costs
//! more than the products at these sizes. Writing forward and backward by hand lets the
//! attention read heads in place (strided views of the packed Q|K|V buffer) and fuse the
//! elementwise work into one pass per row.

use rayon::prelude::*;

/// A row-major block of a buffer: `rows × cols` with `ld` numbers between row starts,
/// read as its transpose when `t` is set.
#[derive(Clone, Copy, Debug)]
pub struct Mat<'a> {
    /// The buffer the block lives in (starting at the block's first element).
    pub data: &'a [f32],
    /// Stored rows.
    pub rows: usize,
    /// Stored columns.
    pub cols: usize,
    /// Distance between row starts (≥ `cols`).
    pub ld: usize,
    /// Read as the transpose.
    pub t: bool,
}

impl<'a> Mat<'a> {
    /// A contiguous `rows × cols` matrix.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Mat<'a> {
        Mat { data, rows, cols, ld: cols, t: false }
    }

    /// A `rows × cols` block whose rows are `ld` apart.
    pub fn strided(data: &'a [f32], rows: usize, cols: usize, ld: usize) -> Mat<'a> {
        Mat { data, rows, cols, ld, t: false }
    }

    /// The same block read transposed.
    pub fn t(self) -> Mat<'a> {
        Mat { t: !self.t, ..self }
    }

    /// Logical (rows, cols) after the optional transpose.
    fn dims(&self) -> (usize, usize) {
        if self.t {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        }
    }

    /// (row stride, column stride) of the logical matrix.
    fn strides(&self) -> (isize, isize) {
        if self.t {
            (1, self.ld as isize)
        } else {
            (self.ld as isize, 1)
        }
    }

    fn check(&self, what: &str) {
        assert!(self.cols <= self.ld, "{what}: {} columns with a row stride of {}", self.cols, self.ld);
        let need = if self.rows == 0 { 0 } else { (self.rows - 1) * self.ld + self.cols };
        assert!(
            need <= self.data.len(),
            "{what}: a {}×{} block (ld {}) needs {need} numbers, the buffer has {}",
            self.rows,
            self.cols,
            self.ld,
            self.data.len()
        );
    }
}

/// `out = a·b` (or `out += a·b` when `accumulate`), with `out` a `rows × cols` block whose
/// rows are `ld` apart. `threads > 1` lets gemm split the product over rayon's pool.
///
/// Panics when the shapes disagree or a block does not fit its buffer: callers are the
/// layers of this module, whose shapes are fixed at construction, not user input.
pub fn matmul(out: &mut [f32], ld: usize, a: Mat, b: Mat, accumulate: bool, threads: usize) {
    let ((m, k), (k2, n)) = (a.dims(), b.dims());
    assert_eq!(k, k2, "matmul: inner dimensions {k} and {k2}");
    a.check("matmul lhs");
    b.check("matmul rhs");
    Mat::strided(out, m, n, ld).check("matmul output");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                out[r * ld..r * ld + n].fill(0.0);
            }
        }
        return;
    }
    let (ars, acs) = a.strides();
    let (brs, bcs) = b.strides();
    let par = if threads > 1 && m * n * k >= 1 << 15 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the three `check`s above prove that every element gemm addresses (row r <
    // m, column c < n of each logical matrix, through the given strides) lies inside its
    // slice; `out` is borrowed mutably, so it aliases neither `a` nor `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            ld as isize,
            accumulate,
            a.data.as_ptr(),
            acs,
            ars,
            b.data.as_ptr(),
            bcs,
            brs,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        );
    }
}

/// Threads for the big products: rayon's pool.
pub fn threads() -> usize {
    rayon::current_num_threads()
}

/// Adds `bias` to every `width`-wide row of `x`.
pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    x.par_chunks_mut(bias.len().max(1) * 64).for_each(|block| {
        for row in block.chunks_exact_mut(bias.len()) {
            row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
        }
    });
}

/// Column sums of a `rows × width` matrix, added into `acc` (a bias gradient).
pub fn add_column_sums(acc: &mut [f32], x: &[f32]) {
    let width = acc.len();
    let partial = x
        .par_chunks(width * 256)
        .map(|block| {
            let mut s = vec![0.0f32; width];
            for row in block.chunks_exact(width) {
                s.iter_mut().zip(row).for_each(|(a, v)| *a += v);
            }
            s
        })
        .collect::<Vec<_>>();
    // Summed in block order, not by rayon's `reduce`, whose tree follows work stealing: the
    // same run gives the same bits every time (a resumed run equals an uninterrupted one).
    for p in &partial {
        acc.iter_mut().zip(p).for_each(|(a, v)| *a += v);
    }
}

/// The activation of a transformer's feed-forward block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FfnActivation {
    /// x·Φ(x) with the exact normal CDF (BERT's and PyTorch's `gelu`).
    GeluErf,
    /// The tanh approximation of GELU (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    /// max(0, x).
    Relu,
}

/// erf(x) as a rational function on [-4, 4] (the approximation Eigen and XNNPACK use),
/// within a few ulp of the true value and vectorisable, unlike `libm::erff`.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10f32;
    p = p * x2 + 2.770_681_4e-08;
    p = p * x2 - 2.101_024e-06;
    p = p * x2 - 5.692_506_4e-05;
    p = p * x2 - 7.349_906_3e-04;
    p = p * x2 - 2.954_600_2e-03;
    p = p * x2 - 1.609_603_3e-02;
    p *= x;
    let mut q = -1.456_607_2e-05f32;
    q = q * x2 - 2.133_740_6e-04;
    q = q * x2 - 1.682_827e-03;
    q = q * x2 - 7.373_329e-03;
    q = q * x2 - 1.426_474e-02;
    p / q
}

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const INV_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
const INV_SQRT_2PI: f32 = 0.398_942_3;

impl FfnActivation {
    /// The activation of one value.
    #[inline(always)]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            FfnActivation::GeluErf => 0.5 * x * (1.0 + erf(x * INV_SQRT_2)),
            FfnActivation::GeluTanh => 0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh()),
            FfnActivation::Relu => x.max(0.0),
        }
    }

    /// Its derivative at `x`.
    #[inline(always)]
    pub fn derivative(self, x: f32) -> f32 {
        match self {
            FfnActivation::GeluErf => {
                0.5 * (1.0 + erf(x * INV_SQRT_2)) + x * INV_SQRT_2PI * (-0.5 * x * x).exp()
            }
            FfnActivation::GeluTanh => {
                let u = SQRT_2_OVER_PI * (x + 0.044715 * x * x * x);
                let t = u.tanh();
                0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * x * x)
            }
            FfnActivation::Relu => {
                if x > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
        }
    }
}

/// `pre += bias` row-wise, then `act = activation(pre)`: one pass over the buffer.
pub fn bias_activation(pre: &mut [f32], act: &mut [f32], bias: &[f32], f: FfnActivation) {
    // One monomorphised loop per activation: the choice is made once, outside the loop, so
    // the loop body vectorises.
    match f {
        FfnActivation::GeluErf => bias_map(pre, act, bias, |x| FfnActivation::GeluErf.apply(x)),
        FfnActivation::GeluTanh => bias_map(pre, act, bias, |x| FfnActivation::GeluTanh.apply(x)),
        FfnActivation::Relu => bias_map(pre, act, bias, |x| FfnActivation::Relu.apply(x)),
    }
}

fn bias_map(pre: &mut [f32], act: &mut [f32], bias: &[f32], f: impl Fn(f32) -> f32 + Sync + Send + Copy) {
    let w = bias.len();
    pre.par_chunks_mut(w * 16).zip(act.par_chunks_mut(w * 16)).for_each(|(p, a)| {
        for (pr, ar) in p.chunks_exact_mut(w).zip(a.chunks_exact_mut(w)) {
            for ((x, y), b) in pr.iter_mut().zip(ar.iter_mut()).zip(bias) {
                *x += b;
                *y = f(*x);
            }
        }
    });
}

/// `grad *= activation'(pre)` elementwise (back through the activation, in place).
pub fn activation_backward(grad: &mut [f32], pre: &[f32], f: FfnActivation) {
    match f {
        FfnActivation::GeluErf => scale_by(grad, pre, |x| FfnActivation::GeluErf.derivative(x)),
        FfnActivation::GeluTanh => scale_by(grad, pre, |x| FfnActivation::GeluTanh.derivative(x)),
        FfnActivation::Relu => scale_by(grad, pre, |x| FfnActivation::Relu.derivative(x)),
    }
}

fn scale_by(grad: &mut [f32], pre: &[f32], d: impl Fn(f32) -> f32 + Sync + Send + Copy) {
    grad.par_chunks_mut(4096).zip(pre.par_chunks(4096)).for_each(|(g, p)| {
        g.iter_mut().zip(p).for_each(|(g, &x)| *g *= d(x));
    });
}

/// Layer norm of each `width`-wide row of `x`, in place: `x ← x̂·gain + bias` with
/// x̂ = (x − mean)/√(var + eps). Keeps x̂ in `xhat` and 1/√(var + eps) in `rstd` for the
/// backward pass.
pub fn layer_norm(x: &mut [f32], xhat: &mut [f32], rstd: &mut [f32], gain: &[f32], bias: &[f32], eps: f32) {
    let w = gain.len();
    x.par_chunks_mut(w).zip(xhat.par_chunks_mut(w)).zip(rstd.par_iter_mut()).for_each(|((row, hat), r)| {
        let mean = row.iter().sum::<f32>() / w as f32;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / w as f32;
        let s = 1.0 / (var + eps).sqrt();
        *r = s;
        for (((v, h), g), b) in row.iter_mut().zip(hat.iter_mut()).zip(gain).zip(bias) {
            *h = (*v - mean) * s;
            *v = *h * g + b;
        }
    });
}

/// [`layer_norm`] for inference: normalises each row in place and keeps nothing for a
/// backward pass.
pub fn layer_norm_inplace(x: &mut [f32], gain: &[f32], bias: &[f32], eps: f32) {
    let w = gain.len();
    x.par_chunks_mut(w * 16).for_each(|block| {
        for row in block.chunks_exact_mut(w) {
            let mean = row.iter().sum::<f32>() / w as f32;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / w as f32;
            let s = 1.0 / (var + eps).sqrt();
            for ((v, g), b) in row.iter_mut().zip(gain).zip(bias) {
                *v = (*v - mean) * s * g + b;
            }
        }
    });
}

/// `x = activation(x + bias)` row-wise, in place: [`bias_activation`] for inference.
pub fn bias_activation_inplace(x: &mut [f32], bias: &[f32], f: FfnActivation) {
    fn run(x: &mut [f32], bias: &[f32], f: impl Fn(f32) -> f32 + Sync + Send + Copy) {
        let w = bias.len();
        x.par_chunks_mut(w * 16).for_each(|block| {
            for row in block.chunks_exact_mut(w) {
                row.iter_mut().zip(bias).for_each(|(v, b)| *v = f(*v + b));
            }
        });
    }
    match f {
        FfnActivation::GeluErf => run(x, bias, |x| FfnActivation::GeluErf.apply(x)),
        FfnActivation::GeluTanh => run(x, bias, |x| FfnActivation::GeluTanh.apply(x)),
        FfnActivation::Relu => run(x, bias, |x| FfnActivation::Relu.apply(x)),
    }
}

/// Back through [`layer_norm`]: `dy` (the gradient of its output) becomes the gradient of
/// its input, in place; the gain and bias gradients are added into `dgain` and `dbias`.
pub fn layer_norm_backward(
    dy: &mut [f32],
    xhat: &[f32],
    rstd: &[f32],
    gain: &[f32],
    dgain: &mut [f32],
    dbias: &mut [f32],
) {
    let w = gain.len();
    let rows_per = 64;
    let partial = dy
        .par_chunks_mut(w * rows_per)
        .zip(xhat.par_chunks(w * rows_per))
        .zip(rstd.par_chunks(rows_per))
        .map(|((dyb, hb), rb)| {
            let mut dg = vec![0.0f32; w];
            let mut db = vec![0.0f32; w];
            for ((d, h), &r) in dyb.chunks_exact_mut(w).zip(hb.chunks_exact(w)).zip(rb) {
                let (mut m1, mut m2) = (0.0f32, 0.0f32);
                for i in 0..w {
                    dg[i] += d[i] * h[i];
                    db[i] += d[i];
                    let dh = d[i] * gain[i];
                    m1 += dh;
                    m2 += dh * h[i];
                }
                let (m1, m2) = (m1 / w as f32, m2 / w as f32);
                for i in 0..w {
                    d[i] = r * (d[i] * gain[i] - m1 - h[i] * m2);
                }
            }
            (dg, db)
        })
        .collect::<Vec<_>>();
    // In block order, as in `add_column_sums`: deterministic bits.
    for (dg, db) in &partial {
        dgain.iter_mut().zip(dg).for_each(|(a, p)| *a += p);
        dbias.iter_mut().zip(db).for_each(|(a, p)| *a += p);
    }
}

/// Softmax of `scale · row` in place (attention scores with their 1/√d folded in).
///
/// Deliberately not `kdx_sdk::math`'s softmax, the one kit for everything else: this is the
/// attention's inner loop (every head, every query row, every layer, forward and backward),
/// so it stays in f32 like the rest of the encoder and the Hugging Face models it is checked
/// against (`tests/hf_exactness.rs`), writes into the score buffer instead of allocating,
/// and folds the scale into the exponent. Computing it the kit's way (f64, a new vector)
/// would cost time here and change every transformer's bits.
pub fn softmax_scaled(row: &mut [f32], scale: f32) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0.0;
    for v in row.iter_mut() {
        *v = ((*v - max) * scale).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|v| *v *= inv);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_gradient_sums_give_the_same_bits_every_time() {
        // Column sums and layer-norm gradients over many row blocks, in a pool where work
        // stealing varies from call to call: the bits never change (they used to, in the last
        // places, and with them every later step of a transformer).
        let pool = rayon::ThreadPoolBuilder::new().num_threads(4).build().unwrap();
        let (rows, w) = (256 * 40, 48);
        let x: Vec<f32> =
            (0..rows * w).map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3 + 1e-7 * i as f32).collect();
        let rstd: Vec<f32> = (0..rows).map(|r| 1.0 + (r % 7) as f32 * 0.1).collect();
        let gain: Vec<f32> = (0..w).map(|i| 0.5 + i as f32 * 0.01).collect();
        let run = || {
            pool.install(|| {
                let mut acc = vec![0f32; w];
                add_column_sums(&mut acc, &x);
                let (mut dy, mut dg, mut db) = (x.clone(), vec![0f32; w], vec![0f32; w]);
                layer_norm_backward(&mut dy, &x, &rstd, &gain, &mut dg, &mut db);
                (acc, dg, db)
            })
        };
        let first = run();
        for _ in 0..30 {
            let again = run();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert!(
                bits(&again.0) == bits(&first.0)
                    && bits(&again.1) == bits(&first.1)
                    && bits(&again.2) == bits(&first.2)
            );
        }
    }

    #[test]
    fn erf_matches_libm_to_a_few_ulp() {
        let mut worst = 0.0f64;
        for i in -6000..=6000 {
            let x = i as f32 / 1000.0;
            worst = worst.max((erf(x) as f64 - libm::erf(x as f64)).abs());
        }
        assert!(worst < 1e-6, "max |erf − libm::erf| = {worst}");
    }

    #[test]
    fn activation_derivatives_match_finite_differences() {
        for f in [FfnActivation::GeluErf, FfnActivation::GeluTanh, FfnActivation::Relu] {
            for &x in &[-3.1f32, -1.2, -0.3, 0.2, 0.9, 2.5] {
                let h = 1e-3f64;
                let fd = (f.apply((x as f64 + h) as f32) as f64 - f.apply((x as f64 - h) as f32) as f64)
                    / (2.0 * h);
                assert!(
                    (fd - f.derivative(x) as f64).abs() < 2e-3,
                    "{f:?} at {x}: fd {fd} vs {}",
                    f.derivative(x)
                );
            }
        }
    }

    #[test]
    fn matmul_reads_transposed_and_strided_blocks() {
        // a = [[1,2],[3,4]] stored with ld 3; b = [[5,6],[7,8]] stored transposed.
        let a = [1.0, 2.0, 99.0, 3.0, 4.0];
        let bt = [5.0, 7.0, 6.0, 8.0];
        let mut out = vec![1.0; 4];
        matmul(&mut out, 2, Mat::strided(&a, 2, 2, 3), Mat::new(&bt, 2, 2).t(), false, 1);
        assert_eq!(out, vec![19.0, 22.0, 43.0, 50.0]);
        matmul(&mut out, 2, Mat::strided(&a, 2, 2, 3), Mat::new(&bt, 2, 2).t(), true, 1);
        assert_eq!(out, vec![38.0, 44.0, 86.0, 100.0]);
    }
}
