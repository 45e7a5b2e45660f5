//! A model's parameters as plain `f32` buffers and their gradients after a step: what
//! layers, optimizers, checkpoints and weight transfer share. Kept below `model` and `nn` so
//! both can use it without reaching into each other.

/// The gradient of one parameter after a step.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Grad {
    /// No gradient this step.
    #[default]
    None,
    /// A gradient for every element.
    Dense(Vec<f32>),
    /// Gradients for some rows of a 2-D table (an embedding), checked at construction.
    Rows(RowGrad),
}

/// Gradients of the touched rows of a `table_rows × width` table: row `k` of `values`
/// belongs to table row `rows[k]`.
///
/// Invariant (checked by [`RowGrad::new`], the only constructor): rows are unique and below
/// `table_rows`, and `values` holds `rows.len() × width` numbers. The optimizer relies on
/// it to update rows in parallel without locks, after checking that `table_rows` and
/// `width` are those of the parameter it updates.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RowGrad {
    rows: Vec<u32>,
    values: Vec<f32>,
    table_rows: usize,
    width: usize,
}

impl RowGrad {
    /// Touched-row gradients of a `table_rows × width` table; an error names the first
    /// repeated or out-of-range row, or a `values` length that is not `rows.len() × width`.
    pub fn new(rows: Vec<u32>, values: Vec<f32>, table_rows: usize, width: usize) -> anyhow::Result<RowGrad> {
        anyhow::ensure!(
            values.len() == rows.len() * width,
            "a row gradient has {} values for {} rows of width {width}",
            values.len(),
            rows.len()
        );
        let mut seen = vec![0u64; table_rows.div_ceil(64)];
        for &r in &rows {
            let r = r as usize;
            anyhow::ensure!(r < table_rows, "a row gradient names row {r} of a table of {table_rows} rows");
            let (word, bit) = (r / 64, 1u64 << (r % 64));
            anyhow::ensure!(seen[word] & bit == 0, "a row gradient names row {r} twice");
            seen[word] |= bit;
        }
        Ok(RowGrad { rows, values, table_rows, width })
    }

    /// The touched rows, unique.
    pub fn rows(&self) -> &[u32] {
        &self.rows
    }

    /// Their gradients, `rows().len() × width()`, row-major.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// Rows of the table the gradient belongs to.
    pub fn table_rows(&self) -> usize {
        self.table_rows
    }

    /// Width of a row.
    pub fn width(&self) -> usize {
        self.width
    }
}

/// One named, trainable tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    /// Stable name (`emb`, `hidden.0.w` …): checkpoint key and optimizer-state key.
    pub name: String,
    /// Shape; the data is row-major.
    pub shape: Vec<usize>,
    /// Values.
    pub data: Vec<f32>,
    /// Gradient of the last step.
    pub grad: Grad,
    /// Whether weight decay applies (not to biases and norms).
    pub decay: bool,
    /// Rows are looked up by id (an embedding table): only these get sparse updates, and
    /// weight transfer requires the row count (the hash buckets) to match exactly.
    pub table: bool,
    /// The dense gradient buffer of the previous step, handed back by the optimizer so the
    /// next step reuses it instead of allocating (and page-faulting) a new one.
    pub spare: SpareBuffer,
}

/// A buffer kept for reuse. It is scratch space, not state: it clones empty and compares
/// equal to any other, so it never makes two parameters differ.
#[derive(Default, Debug)]
pub struct SpareBuffer(pub Vec<f32>);

impl Clone for SpareBuffer {
    fn clone(&self) -> SpareBuffer {
        SpareBuffer::default()
    }
}

impl PartialEq for SpareBuffer {
    fn eq(&self, _: &SpareBuffer) -> bool {
        true
    }
}

impl Param {
    /// A parameter filled with zeros.
    pub fn zeros(name: impl Into<String>, shape: &[usize], decay: bool) -> Param {
        let data = vec![0.0; shape.iter().product()];
        Param {
            name: name.into(),
            shape: shape.to_vec(),
            data,
            grad: Grad::None,
            decay,
            table: false,
            spare: SpareBuffer::default(),
        }
    }

    /// The dense gradient buffer to accumulate into, created at zero when this step has
    /// none yet (from the spare buffer of the last step when there is one). A touched-rows
    /// gradient already present is made dense.
    pub fn grad_buffer(&mut self) -> &mut Vec<f32> {
        let n = self.data.len();
        match std::mem::take(&mut self.grad) {
            Grad::Dense(g) => self.grad = Grad::Dense(g),
            Grad::Rows(r) => {
                let mut g = self.take_spare();
                let w = r.width();
                for (k, &row) in r.rows().iter().enumerate() {
                    let row = row as usize;
                    g[row * w..(row + 1) * w]
                        .iter_mut()
                        .zip(&r.values()[k * w..(k + 1) * w])
                        .for_each(|(a, b)| *a += b);
                }
                self.grad = Grad::Dense(g);
            }
            Grad::None => self.grad = Grad::Dense(self.take_spare()),
        }
        debug_assert!(matches!(&self.grad, Grad::Dense(g) if g.len() == n));
        match &mut self.grad {
            Grad::Dense(g) => g,
            _ => unreachable!("made dense just above"),
        }
    }

    /// A zeroed buffer of the parameter's size, reusing the spare one.
    fn take_spare(&mut self) -> Vec<f32> {
        let mut g = std::mem::take(&mut self.spare.0);
        g.clear();
        g.resize(self.data.len(), 0.0);
        g
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// Adds a dense gradient into [`Param::grad`].
    pub fn add_dense_grad(&mut self, g: &[f32]) {
        debug_assert_eq!(g.len(), self.data.len());
        match &mut self.grad {
            Grad::Dense(acc) => acc.iter_mut().zip(g).for_each(|(a, b)| *a += b),
            other => *other = Grad::Dense(g.to_vec()),
        }
    }
}
