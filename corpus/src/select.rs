//! Choosing locales of the corpus: the `languages` parameter of the dataset plugins.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A locale selection: "top-N" (the N largest), "min-K" (every locale with ≥ K rows),
/// "all", or an explicit list of locale codes.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Languages {
    /// "top-N", "min-K" or "all".
    Rule(String),
    /// Explicit locale codes.
    List(Vec<String>),
}

enum Rule<'a> {
    Top(usize),
    Min(usize),
    All,
    List(&'a [String]),
}

impl Languages {
    fn rule(&self) -> anyhow::Result<Rule<'_>> {
        match self {
            Languages::List(v) if v.is_empty() => Err(anyhow::anyhow!("the language list is empty")),
            Languages::List(v) => Ok(Rule::List(v)),
            Languages::Rule(s) if s == "all" => Ok(Rule::All),
            Languages::Rule(s) => {
                let num =
                    |p: &str| s.strip_prefix(p).and_then(|n| n.parse::<usize>().ok()).filter(|&n| n > 0);
                match (num("top-"), num("min-")) {
                    (Some(n), _) => Ok(Rule::Top(n)),
                    (_, Some(k)) => Ok(Rule::Min(k)),
                    _ => Err(anyhow::anyhow!(
                        "expected \"top-N\", \"min-K\", \"all\" or a list of locales, found \"{s}\""
                    )),
                }
            }
        }
    }

    /// Checks the selection's syntax and that no locale is listed twice (plan time; the
    /// message is for the recipe's location).
    pub fn check(&self) -> anyhow::Result<()> {
        if let Languages::List(v) = self {
            let mut seen = std::collections::BTreeSet::new();
            if let Some(dup) = v.iter().find(|l| !seen.insert(l.as_str())) {
                anyhow::bail!("locale `{dup}` is listed twice");
            }
        }
        self.rule().map(drop)
    }

    /// Checks the selection against the MANIFEST.json beside a snapshot (its locales, after
    /// `merge`), so an unknown locale is found when the recipe is planned, not at run time.
    /// Without a readable MANIFEST.json there is nothing to check against (loading reports it).
    pub fn check_in_snapshot(
        &self,
        corpus: &std::path::Path,
        merge: &BTreeMap<String, String>,
    ) -> anyhow::Result<()> {
        let manifest = crate::build::manifest_json_path(corpus);
        let Ok(counts) = crate::load::read_manifest_counts(&manifest) else { return Ok(()) };
        let merged: Vec<String> =
            counts.keys().map(|l| merge.get(l).cloned().unwrap_or_else(|| l.clone())).collect();
        self.check_available(merged.iter().map(String::as_str), &manifest.display().to_string())
    }

    /// Checks that every listed locale is one of `available` (a corpus's locales, e.g. from
    /// its MANIFEST), so `kdx validate` finds an unknown locale without loading the corpus.
    pub fn check_available<'a>(
        &self,
        available: impl IntoIterator<Item = &'a str>,
        source: &str,
    ) -> anyhow::Result<()> {
        let Languages::List(v) = self else { return Ok(()) };
        let available: std::collections::BTreeSet<&str> = available.into_iter().collect();
        match v.iter().find(|l| !available.contains(l.as_str())) {
            None => Ok(()),
            Some(l) => {
                let lower = l.to_lowercase();
                let near: Vec<&str> = available
                    .iter()
                    .copied()
                    .filter(|a| a.to_lowercase().starts_with(&lower[..lower.len().min(2)]))
                    .take(8)
                    .collect();
                Err(anyhow::anyhow!(
                    "locale `{l}` is not in {source}{}",
                    if near.is_empty() { String::new() } else { format!("; similar: {}", near.join(", ")) }
                ))
            }
        }
    }

    /// The selected locales, sorted and unique, given the rows per locale; `source` names
    /// the corpus in errors. Ties in size are broken by name, so "top-N" is deterministic.
    pub fn select(&self, counts: &BTreeMap<String, usize>, source: &str) -> anyhow::Result<Vec<String>> {
        let rule = self.rule().map_err(anyhow::Error::msg)?;
        let mut by_size: Vec<(&String, &usize)> = counts.iter().collect();
        by_size.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let mut out: Vec<String> = match rule {
            Rule::All => counts.keys().cloned().collect(),
            Rule::Top(n) => by_size.iter().take(n).map(|(l, _)| (*l).clone()).collect(),
            Rule::Min(k) => by_size.iter().filter(|(_, &c)| c >= k).map(|(l, _)| (*l).clone()).collect(),
            Rule::List(v) => {
                for l in v {
                    anyhow::ensure!(
                        counts.contains_key(l),
                        "locale `{l}` is not in {source}; it has: {}",
                        counts.keys().cloned().collect::<Vec<_>>().join(", ")
                    );
                }
                v.to_vec()
            }
        };
        out.sort();
        out.dedup();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_select_by_size_and_name() {
        let counts: BTreeMap<String, usize> =
            [("de", 5), ("fr", 9), ("ja", 5), ("xx", 1)].iter().map(|(l, n)| (l.to_string(), *n)).collect();
        let sel = |l: Languages| l.select(&counts, "c").map_err(|e| e.to_string());
        assert_eq!(sel(Languages::Rule("top-2".into())).unwrap(), vec!["de", "fr"]);
        assert_eq!(sel(Languages::Rule("min-5".into())).unwrap(), vec!["de", "fr", "ja"]);
        assert_eq!(sel(Languages::Rule("all".into())).unwrap().len(), 4);
        assert_eq!(
            sel(Languages::List(vec!["ja".into(), "de".into(), "ja".into()])).unwrap(),
            vec!["de", "ja"]
        );
        assert!(sel(Languages::List(vec!["zz".into()])).unwrap_err().contains("`zz` is not in c"));
        assert!(Languages::Rule("top40".into()).check().unwrap_err().to_string().contains("\"top-N\""));
        assert!(Languages::List(vec![]).check().is_err());
    }
}
