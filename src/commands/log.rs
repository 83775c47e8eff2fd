//! `log.collect_system_logs`: a base64 gzip tarball the conductor stores when a flow fails
//! (see `system::logs` for what it holds).

use serde_json::json;

use super::{no_args, Context, Outcome, Params};
use crate::error::CommandError;
use crate::system::logs;

pub fn collect_system_logs(_ctx: &Context, params: Params) -> Result<Outcome, CommandError> {
    no_args(&params)?;
    let b64 = logs::archive_base64()
        .map_err(|e| CommandError::exec(format!("building the log archive: {e}")))?;
    Ok(Outcome::Json(json!({ "system_logs": b64 })))
}
