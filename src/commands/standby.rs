//! `standby.*`: partition UUIDs of the written image, sync, and the power actions.

use super::{no_args, Context, Outcome, Params, SystemEvent};
use crate::error::CommandError;
use crate::system::power;

pub fn get_partition_uuids(ctx: &Context, params: Params) -> Result<Outcome, CommandError> {
    no_args(&params)?;
    let v = crate::panics::lock(&ctx.partition_uuids).clone();
    Ok(Outcome::Json(v))
}

/// Flush everything to stable storage; used by the conductor before out-of-band power actions.
pub fn sync(_ctx: &Context, params: Params) -> Result<Outcome, CommandError> {
    no_args(&params)?;
    power::full_sync();
    Ok(Outcome::Null)
}

pub fn power_off(ctx: &Context, params: Params) -> Result<Outcome, CommandError> {
    no_args(&params)?;
    power::full_sync();
    ctx.emit(SystemEvent::PowerOff);
    Ok(Outcome::Null)
}

/// IPA's name for "reboot into the deployed instance".
pub fn run_image(ctx: &Context, params: Params) -> Result<Outcome, CommandError> {
    no_args(&params)?;
    power::full_sync();
    ctx.emit(SystemEvent::Reboot);
    Ok(Outcome::Null)
}
