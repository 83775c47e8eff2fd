//! `poll.get_hardware_info`: the inventory in IPA's shape.

use super::{no_args, Context, Outcome, Params};
use crate::error::CommandError;
use crate::hardware::inventory;

pub fn get_hardware_info(ctx: &Context, params: Params) -> Result<Outcome, CommandError> {
    no_args(&params)?;
    let mut opts = inventory::Options::from_config(&ctx.config);
    if ctx.config.inspection.collect_lldp {
        opts.lldp = ctx.lldp.clone();
    }
    let inv = inventory::collect(&opts);
    serde_json::to_value(inv)
        .map(Outcome::Json)
        .map_err(|e| CommandError::exec(format!("serialising the inventory: {e}")))
}
