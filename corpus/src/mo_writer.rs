//! A minimal `.mo` writer for tests, so they build their own catalogs (both byte orders,
//! contexts, plurals, any charset) instead of depending on what a machine has installed.

/// Byte order of the written file.
#[derive(Clone, Copy)]
pub enum Endian {
    Little,
    Big,
}

/// One raw (original, translation) pair exactly as stored in the file.
pub struct RawEntry {
    pub original: Vec<u8>,
    pub translation: Vec<u8>,
}

impl RawEntry {
    /// The header entry declaring `charset`.
    pub fn header(charset: &str) -> Self {
        let h = format!(
            "Project-Id-Version: test 1.0\nMIME-Version: 1.0\n\
             Content-Type: text/plain; charset={charset}\n\
             Content-Transfer-Encoding: 8bit\nPlural-Forms: nplurals=2; plural=(n != 1);\n"
        );
        Self::raw(Vec::new(), h.into_bytes())
    }

    pub fn simple(id: &str, s: &str) -> Self {
        Self::raw(id.as_bytes().to_vec(), s.as_bytes().to_vec())
    }

    pub fn with_context(ctx: &str, id: &str, s: &str) -> Self {
        Self::raw(format!("{ctx}\u{4}{id}").into_bytes(), s.as_bytes().to_vec())
    }

    pub fn plural(id: &str, id_plural: &str, forms: &[&str]) -> Self {
        Self::raw(format!("{id}\0{id_plural}").into_bytes(), forms.join("\0").into_bytes())
    }

    pub fn raw(original: Vec<u8>, translation: Vec<u8>) -> Self {
        RawEntry { original, translation }
    }
}

/// Writes a revision-0 `.mo` file with the entries sorted by original, as msgfmt does, and
/// no hash table.
pub fn write_mo(entries: &[RawEntry], endian: Endian) -> Vec<u8> {
    let mut sorted: Vec<&RawEntry> = entries.iter().collect();
    sorted.sort_by(|a, b| a.original.cmp(&b.original));
    let n = sorted.len() as u32;
    let put = |out: &mut Vec<u8>, v: u32| match endian {
        Endian::Little => out.extend_from_slice(&v.to_le_bytes()),
        Endian::Big => out.extend_from_slice(&v.to_be_bytes()),
    };
    let orig_off = 28u32;
    let trans_off = orig_off + 8 * n;
    let mut data_off = trans_off + 8 * n;

    let mut out = Vec::new();
    for v in [0x9504_12de, 0, n, orig_off, trans_off, 0, data_off] {
        put(&mut out, v);
    }
    let mut data = Vec::new();
    let mut table = |out: &mut Vec<u8>, s: &[u8]| {
        put(out, s.len() as u32);
        put(out, data_off);
        data.extend_from_slice(s);
        data.push(0);
        data_off += s.len() as u32 + 1;
    };
    for e in &sorted {
        table(&mut out, &e.original);
    }
    for e in &sorted {
        table(&mut out, &e.translation);
    }
    out.extend_from_slice(&data);
    out
}
