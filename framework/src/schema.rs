//! Plugin documentation and the recipe JSON Schema, both generated from the plugins'
//! parameter structs (their `schemars` schemas carry types, defaults and doc comments).

use serde_json::{json, Map, Value};

use crate::plan::{ExperimentSection, FinetuneSection, Init, SetSection, StageConfig, TrainSection};
use crate::registry::{self, PluginKind, Registration};
use crate::schedule::Schedule;

fn schema_json<T: schemars::JsonSchema>() -> Value {
    serde_json::to_value(schemars::schema_for!(T)).unwrap_or(Value::Null)
}

/// A short type name for a property schema.
fn type_name(p: &Value) -> String {
    if let Some(r) = p.get("$ref").and_then(Value::as_str) {
        return r.rsplit('/').next().unwrap_or(r).to_string();
    }
    if let Some(all) = p.get("allOf").and_then(Value::as_array) {
        if let Some(first) = all.first() {
            return type_name(first);
        }
    }
    if let Some(any) = p.get("anyOf").and_then(Value::as_array) {
        let parts: Vec<String> = any.iter().map(type_name).filter(|t| t != "null").collect();
        return parts.join(" | ");
    }
    if let Some(e) = p.get("enum").and_then(Value::as_array) {
        return e.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(" | ");
    }
    match p.get("type") {
        Some(Value::String(t)) if t == "array" => {
            format!("[{}]", p.get("items").map(type_name).unwrap_or_else(|| "any".into()))
        }
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(ts)) => {
            ts.iter().filter_map(Value::as_str).filter(|t| *t != "null").collect::<Vec<_>>().join(" | ")
        }
        _ => "any".into(),
    }
}

/// The text `kdx plugins` prints for one plugin (`full`: every parameter with its docs).
pub fn describe(r: &Registration, full: bool) -> String {
    let schema = serde_json::to_value((r.schema)()).unwrap_or(Value::Null);
    let mut s = format!("  {:<18} {}\n", r.name, r.summary);
    if full {
        s = format!("{} ({} plugin)\n  {}\n", r.name, r.kind(), r.summary);
    }
    s + &parameters(&schema, full)
}

/// The parameters part of a plugin's description, from its schema.
fn parameters(schema: &Value, full: bool) -> String {
    let mut s = String::new();
    let props = schema.get("properties").and_then(Value::as_object).cloned().unwrap_or_default();
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if full {
        if let Some(d) = schema.get("description").and_then(Value::as_str) {
            s.push('\n');
            for line in d.lines() {
                s.push_str(&format!("  {line}\n"));
            }
        }
        s.push_str("\nparameters:\n");
    }
    if props.is_empty() {
        s.push_str(if full { "  (none)\n" } else { "" });
    }
    for (k, p) in &props {
        let default = match p.get("default") {
            Some(Value::Null) => " (optional)".into(),
            Some(d) => format!(" = {d}"),
            None if required.contains(&k.as_str()) => " (required)".into(),
            None => String::new(),
        };
        let doc = p.get("description").and_then(Value::as_str).unwrap_or("");
        if full {
            s.push_str(&format!("  {k}: {}{default}\n", type_name(p)));
            for line in doc.lines() {
                s.push_str(&format!("      {line}\n"));
            }
        } else {
            let first = doc.lines().next().unwrap_or("");
            s.push_str(&format!("      {k}: {}{default}  — {first}\n", type_name(p)));
        }
    }
    s
}

/// The text `kdx plugins` prints for a loss plugin from a dynamic library: its name, summary
/// and origin, and its parameters when it publishes their schema (otherwise the plugin alone
/// checks them).
pub fn describe_library(lib: &crate::dylib::PluginLibrary, full: bool) -> String {
    let origin = format!(
        "dynamic library {} (built for kdx {}, plugin ABI {})",
        lib.path().display(),
        lib.framework_version(),
        lib.abi_version()
    );
    let head = match full {
        true => format!("{} (loss plugin)\n  {}\n\n  from the {origin}\n", lib.name(), lib.summary()),
        false => format!("  {:<18} {}\n      from the {origin}\n", lib.name(), lib.summary()),
    };
    let params = match (lib.params_schema(), full) {
        (Some(schema), _) => parameters(schema, full),
        (None, true) => {
            "\nparameters:\n  checked by the plugin: the `[[loss]]` table without `plugin` and `weight`, passed as JSON\n".into()
        }
        (None, false) => String::new(),
    };
    head + &params
}

/// Moves a schema's `definitions` into `defs` and returns the schema without them.
fn hoist(mut v: Value, defs: &mut Map<String, Value>) -> Value {
    if let Some(Value::Object(d)) = v.as_object_mut().and_then(|o| o.remove("definitions")) {
        for (k, val) in d {
            defs.entry(k).or_insert(val);
        }
    }
    if let Some(o) = v.as_object_mut() {
        o.remove("$schema");
        o.remove("title");
    }
    v
}

/// A plugin section: `plugin = "<name>"` plus the plugin's parameters plus `extra` keys the
/// framework owns there (e.g. `weight` in `[[loss]]`).
fn plugin_section(
    kind: PluginKind,
    extra: &Map<String, Value>,
    defs: &mut Map<String, Value>,
    libraries: &[(&str, &str, Option<&Value>)],
) -> Value {
    let mut variants: Vec<Value> = registry::list(kind)
        .into_iter()
        .map(|r| {
            let mut s = hoist(serde_json::to_value((r.schema)()).unwrap_or(Value::Null), defs);
            let o = s.as_object_mut().expect("a struct schema is an object");
            let props = o.entry("properties").or_insert_with(|| json!({}));
            if let Some(p) = props.as_object_mut() {
                p.insert("plugin".into(), json!({ "const": r.name, "description": r.summary }));
                for (k, v) in extra {
                    p.insert(k.clone(), v.clone());
                }
            }
            let req = o.entry("required").or_insert_with(|| json!([]));
            if let Some(a) = req.as_array_mut() {
                a.push(json!("plugin"));
            }
            o.insert("additionalProperties".into(), json!(false));
            o.insert("type".into(), json!("object"));
            s
        })
        .collect();
    if kind == PluginKind::Loss {
        variants.extend(library_losses(libraries, extra, defs));
    }
    json!({ "oneOf": variants })
}

/// Schema variants for dynamic-library losses (name, summary, published schema): their name,
/// the framework keys, and their own parameters when they publish a schema (any other key
/// otherwise: the plugin checks its own parameters).
fn library_losses(
    libraries: &[(&str, &str, Option<&Value>)],
    extra: &Map<String, Value>,
    defs: &mut Map<String, Value>,
) -> Vec<Value> {
    libraries
        .iter()
        .map(|(name, summary, schema)| {
            let mut s = match schema {
                Some(s) => hoist((*s).clone(), defs),
                None => json!({ "additionalProperties": true }),
            };
            let o = s.as_object_mut().expect("a schema is an object");
            let props = o.entry("properties").or_insert_with(|| json!({}));
            if let Some(p) = props.as_object_mut() {
                p.insert("plugin".into(), json!({ "const": name, "description": summary }));
                p.extend(extra.clone());
            }
            o.insert("required".into(), json!(["plugin"]));
            o.insert("type".into(), json!("object"));
            if schema.is_some() {
                o.insert("additionalProperties".into(), json!(false));
            }
            s
        })
        .collect()
}

/// The JSON Schema (draft 7) of a recipe, built from the registered plugins.
pub fn recipe_schema() -> Value {
    recipe_schema_with(&[])
}

/// [`recipe_schema`], also accepting the losses of some dynamic libraries in `[[loss]]`.
pub fn recipe_schema_with(libraries: &[std::sync::Arc<crate::dylib::PluginLibrary>]) -> Value {
    let libs: Vec<(&str, &str, Option<&Value>)> =
        libraries.iter().map(|l| (l.name(), l.summary(), l.params_schema())).collect();
    let mut defs = Map::new();
    let stage = hoist(schema_json::<StageConfig>(), &mut defs);
    let schedule = hoist(schema_json::<Schedule>(), &mut defs);
    let init = hoist(schema_json::<Init>(), &mut defs);
    let mut teacher_extra = Map::new();
    teacher_extra.insert("train".into(), stage);
    let mut student_extra = Map::new();
    student_extra.insert("init".into(), init);
    let mut loss_extra = Map::new();
    loss_extra.insert("weight".into(), schedule);
    let experiment = hoist(schema_json::<ExperimentSection>(), &mut defs);
    let train = hoist(schema_json::<TrainSection>(), &mut defs);
    let finetune = hoist(schema_json::<FinetuneSection>(), &mut defs);
    let data = plugin_section(PluginKind::Dataset, &Map::new(), &mut defs, &[]);
    let teacher = plugin_section(PluginKind::Model, &teacher_extra, &mut defs, &[]);
    let student = plugin_section(PluginKind::Model, &student_extra, &mut defs, &[]);
    let loss = plugin_section(PluginKind::Loss, &loss_extra, &mut defs, &libs);
    let sampler = plugin_section(PluginKind::Sampler, &Map::new(), &mut defs, &[]);
    let mut reference_extra = Map::new();
    reference_extra.insert(
        "name".into(),
        json!({ "description": "The reference's rows in retrieval.csv.", "type": "string" }),
    );
    let reference = plugin_section(PluginKind::Model, &reference_extra, &mut defs, &[]);
    let set = hoist(schema_json::<SetSection>(), &mut defs);
    let retrieval = json!({
        "description": "Extra evaluation sets and reference models of a parallel-data run's retrieval.csv.",
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "sets": { "description": "Evaluation sets by name (the `set` column).", "type": "object", "additionalProperties": set },
            "references": { "description": "Pretrained encoders that read both sides themselves.", "type": "array", "items": reference }
        }
    });
    json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "kdx recipe",
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "extends": { "description": "Base recipe(s), relative to this file; later keys win.", "anyOf": [{ "type": "string" }, { "type": "array", "items": { "type": "string" } }] },
            "experiment": experiment,
            "data": data,
            "teacher": teacher,
            "student": student,
            "loss": { "type": "array", "minItems": 1, "items": loss },
            "sampler": sampler,
            "train": train,
            "finetune": finetune,
            "retrieval": retrieval,
            "plugins": { "type": "object", "additionalProperties": false, "properties": { "libraries": { "type": "array", "items": { "type": "string" } } } },
            "sweep": { "description": "A grid over dotted keys: \"loss.0.temperature\" = [1, 2, 4].", "type": "object", "additionalProperties": { "type": "array", "minItems": 1 } }
        },
        "definitions": defs,
    })
}
