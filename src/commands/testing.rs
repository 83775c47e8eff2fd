//! `test.*`: commands for exercising the executor and API from integration tests (a long
//! async command for the busy rule, a failing one for error shapes, panicking ones for the
//! panic boundaries). Only registered with the
//! hidden `--test-extension` flag.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::{args, Context, Outcome, Params};
use crate::error::{CommandError, ErrorKind};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Sleep {
    seconds: f64,
}

pub fn sleep(_ctx: &Context, params: Params) -> Result<Outcome, CommandError> {
    let a: Sleep = args(params)?;
    if !(0.0..=600.0).contains(&a.seconds) {
        return Err(CommandError::new(
            ErrorKind::InvalidParams,
            "seconds must be 0-600",
        ));
    }
    std::thread::sleep(Duration::from_secs_f64(a.seconds));
    Ok(Outcome::Text(format!("slept {}s", a.seconds)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fail {
    message: String,
}

pub fn fail(_ctx: &Context, params: Params) -> Result<Outcome, CommandError> {
    let a: Fail = args(params)?;
    Err(CommandError::exec(a.message))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Panic {
    message: String,
}

/// A bug on purpose: the command must fail with an error the conductor sees, and the agent,
/// its log and its later commands must carry on (and never show a secret the message holds).
pub fn panic(_ctx: &Context, params: Params) -> Result<Outcome, CommandError> {
    let a: Panic = args(params)?;
    panic!("test.panic: {}", a.message);
}

pub fn echo(_ctx: &Context, params: Params) -> Result<Outcome, CommandError> {
    Ok(Outcome::Json(Value::Object(params)))
}
