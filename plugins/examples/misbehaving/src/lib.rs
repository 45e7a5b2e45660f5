//! `misbehaving`: a loss plugin that breaks the rules on request — the fixture with which
//! kdx's tests check that every kind of bad plugin is refused with a clear message and never
//! takes the process down. Not an authoring example: see `focal-kd` for that.
//!
//! How it describes itself is chosen when kdx loads it, by the environment variable
//! `KDX_MISBEHAVE` (one value):
//!
//! - `wrong-abi`: reports an ABI version kdx does not speak;
//! - `wrong-version`: reports that it was built for kdx 99.0;
//! - `name=NAME`: calls itself NAME (to clash with a built-in or another plugin);
//! - `panic-entry`: panics in the entry point itself (which then returns no descriptor).
//!
//! What its loss does is chosen per `[[loss]]` table: `panic = "create"` or `"compute"`
//! panics there, `fail = "compute"` returns an error; otherwise it is the mean squared
//! difference between student and teacher logits.

use std::ffi::CString;
use std::sync::OnceLock;

use kdx_sdk::abi::PluginDescriptor;
use kdx_sdk::export::{descriptor, SyncDescriptor};
use kdx_sdk::{bail, Loss, LossInput, LossOutput, Params, Result};
use serde::Deserialize;

/// Parameters.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MisbehavingParams {
    /// `"create"` or `"compute"`: panic there.
    #[serde(default)]
    pub panic: Option<String>,
    /// `"compute"`: return an error there.
    #[serde(default)]
    pub fail: Option<String>,
}

/// The loss.
pub struct Misbehaving {
    p: MisbehavingParams,
}

impl Loss for Misbehaving {
    const NAME: &'static str = "misbehaving";
    const SUMMARY: &'static str = "test fixture: misbehaves on request";

    fn create(params: &Params) -> Result<Self> {
        let p: MisbehavingParams = params.parse()?;
        if p.panic.as_deref() == Some("create") {
            panic!("misbehaving: deliberate panic in create");
        }
        Ok(Misbehaving { p })
    }

    fn needs_teacher(&self) -> bool {
        true
    }

    fn compute(&mut self, x: &LossInput) -> Result<LossOutput> {
        if self.p.panic.as_deref() == Some("compute") {
            panic!("misbehaving: deliberate panic in compute at step {}", x.step);
        }
        if self.p.fail.as_deref() == Some("compute") {
            bail!("misbehaving: deliberate error in compute at step {}", x.step);
        }
        let t = x.teacher_logits()?;
        let n = x.student_logits.len().max(1) as f32;
        let d: Vec<f32> = x.student_logits.iter().zip(t).map(|(z, t)| z - t).collect();
        Ok(LossOutput {
            value: d.iter().map(|d| d * d).sum::<f32>() / n,
            grad_logits: d.iter().map(|d| 2.0 * d / n).collect(),
            grad_hidden: None,
        })
    }
}

fn build() -> Option<SyncDescriptor> {
    let mut d: PluginDescriptor = descriptor::<Misbehaving>()?;
    let mode = std::env::var("KDX_MISBEHAVE").unwrap_or_default();
    match mode.as_str() {
        "wrong-abi" => d.v1.abi_version = kdx_sdk::ABI_VERSION + 1,
        "wrong-version" => d.v1.framework_version = CString::new("99.0.0").ok()?.into_raw(),
        "panic-entry" => panic!("misbehaving: deliberate panic in the entry point"),
        m => {
            if let Some(name) = m.strip_prefix("name=") {
                d.v1.name = CString::new(name).ok()?.into_raw();
            }
        }
    }
    Some(SyncDescriptor(d))
}

/// The entry point, written by hand (instead of `export_loss!`) to misreport on request.
#[no_mangle]
pub extern "C" fn kdx_plugin_entry() -> *const PluginDescriptor {
    static D: OnceLock<Option<SyncDescriptor>> = OnceLock::new();
    match std::panic::catch_unwind(|| {
        D.get_or_init(build).as_ref().map_or(std::ptr::null(), |d| &d.0 as *const _)
    }) {
        Ok(p) => p,
        Err(_) => std::ptr::null(),
    }
}
