//! `system.lockdown`: stop serving the API and heartbeating for good (used for nodes whose
//! power must not be touched: the conductor polls until the agent stops answering).

use super::{no_args, Context, Outcome, Params, SystemEvent};
use crate::error::CommandError;
use crate::system::power;

pub fn lockdown(ctx: &Context, params: Params) -> Result<Outcome, CommandError> {
    no_args(&params)?;
    power::full_sync();
    ctx.emit(SystemEvent::Lockdown);
    Ok(Outcome::Null)
}
