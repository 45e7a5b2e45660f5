//! The boundary with plugin code: calls into it marked as such (so the panic hook stays
//! quiet for panics kdx reports), and a plugin's refusal of its parameters located in the
//! recipe.

use kdx_recipe::{Diagnostic, KeyPath, RecipeDoc};

/// A plugin's refusal of its parameters as a diagnostic: at the offending key when the message
/// names one (`` `temperature`: … ``, as `kdx_sdk::Params::parse` writes it), worded as for
/// built-in plugins (`expected a number, found string "hot"`); at the table otherwise.
pub fn parameter_error(
    doc: &RecipeDoc,
    key: &KeyPath,
    params: &toml::Table,
    msg: &str,
    prefix: &str,
) -> Diagnostic {
    let named = msg.strip_prefix('`').and_then(|r| r.split_once("`: ")).filter(|(k, _)| {
        let first = k.split(['.', '[']).next().unwrap_or_default();
        params.contains_key(first)
    });
    match named {
        Some((k, rest)) => {
            let at = k.split('.').filter(|s| !s.is_empty()).fold(key.clone(), |p, s| p.key(s));
            let (message, help) = kdx_recipe::humanize_serde_message(rest);
            doc.diag(&at, format!("{prefix}{message}"), help)
        }
        None => {
            let (message, help) = kdx_recipe::humanize_serde_message(msg);
            doc.diag(key, format!("{prefix}{message}"), help)
        }
    }
}

thread_local! {
    static IN_PLUGIN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` (a call into plugin code that catches its panics) marked as such, so the
/// application's panic hook can stay silent for panics kdx reports itself ([`in_plugin_call`]).
pub fn plugin_call<R>(f: impl FnOnce() -> R) -> R {
    let was = IN_PLUGIN.with(|c| c.replace(true));
    let r = f();
    IN_PLUGIN.with(|c| c.set(was));
    r
}

/// Whether this thread is inside [`plugin_call`]: a panic here is caught and reported by kdx.
pub fn in_plugin_call() -> bool {
    IN_PLUGIN.with(std::cell::Cell::get)
}
