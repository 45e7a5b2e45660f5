//! The gettext corpus: human translations of software messages taken from the GNU `.mo`
//! catalogs every Debian machine carries, turned into a parallel, many-language corpus.
//!
//! The pipeline is split into small modules so each step can be tested alone:
//! - [`mo`] parses one binary catalog into (context, msgid, msgstr) entries;
//! - [`clean`] strips markup, mnemonics and placeholders and decides which pairs to keep
//!   ([`clean::clean_pair`] cleans a msgid and its translation together, as the build does);
//! - [`build`] walks a locale tree and writes the reproducible `.tsv.gz` snapshot + MANIFEST;
//! - [`load`] reads a snapshot back (done at the start of every run, so it is fast);
//! - [`split`] assigns train/dev/test by a stable hash of the msgid;
//! - [`snapshot`] holds what the others share: build options and report, the columns.

pub mod build;
pub mod clean;
pub mod load;
mod manifest;
pub mod mo;
pub mod select;
pub mod snapshot;
pub mod split;

#[cfg(test)]
mod mo_writer;
