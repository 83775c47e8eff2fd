//! The `inject_files` deploy step: the files come from `node.properties.inject_files` and the
//! step's `files` argument; `verify_ca` tunes the download of URL contents. The work is
//! `deploy::inject_files`.

use serde_json::{json, Map, Value};

use super::Context;
use crate::deploy::inject_files::{inject, validate};
use crate::error::CommandError;
use crate::image::fetch::FetchOptions;

/// The deploy step.
pub fn inject_files_step(
    ctx: &Context,
    step_args: &Map<String, Value>,
) -> Result<Option<Value>, CommandError> {
    let node = ctx.node_value();
    let from_node = node
        .get("properties")
        .and_then(|p| p.get("inject_files"))
        .cloned()
        .unwrap_or(Value::Null);
    let files = validate(&from_node, step_args.get("files").unwrap_or(&Value::Null))?;
    if files.is_empty() {
        tracing::info!("no files to inject");
        return Ok(Some(json!({"files": 0})));
    }
    let mut fetch = FetchOptions::from_config(&ctx.config);
    match step_args.get("verify_ca") {
        Some(Value::Bool(false)) => fetch.insecure = true,
        Some(Value::String(path)) => fetch.ca_file = Some(path.into()),
        _ => {}
    }
    let disk = ctx.target_disk()?;
    ctx.check_test_disk(&disk)?;
    inject(&disk, &files, &node, &ctx.ports_value(), &fetch)?;
    Ok(Some(json!({"files": files.len()})))
}
